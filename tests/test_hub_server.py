"""The local test Hub (tests/hub_server.py) against the real clients.

Owns: proof that huggingface_hub 2.4, transformers and peft do everything kit
needs from the Hub against `HubServer` and touch nothing it does not implement
(`server.unhandled` stays empty), that the token only ever travels in the
authorization header, and that injected faults are survived or refused cleanly.

Runs alone or inside the suite: tests/conftest.py may already have pointed the
environment at a server (fixture `hub_server`); then this module reuses it,
else it configures the environment itself before importing huggingface_hub.

    .venv/bin/python -m pytest tests/test_hub_server.py -q
"""

from __future__ import annotations

import copy
import json
import os
import time
import urllib.error
import urllib.request
import uuid

try:  # tests/ on sys.path (pytest's default rootdir-less import) ...
    from hub_env import FAKE_TOKEN, ensure_hub_env
except ImportError:  # ... or tests/ as a package
    from tests.hub_env import FAKE_TOKEN, ensure_hub_env

# Must run before huggingface_hub is imported: it freezes HF_ENDPOINT at import.
PORT = ensure_hub_env()

import pytest  # noqa: E402
import torch  # noqa: E402
from huggingface_hub import (  # noqa: E402
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (  # noqa: E402
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:
    from hub_server import HubServer, git_blob_oid
except ImportError:
    from tests.hub_server import HubServer, git_blob_oid


@pytest.fixture(scope="module")
def server(request):
    """conftest's session server when there is one, else one for this module."""
    try:
        shared = request.getfixturevalue("hub_server")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        yield shared
        return
    own = HubServer(port=PORT).start()
    yield own
    own.stop()


@pytest.fixture
def hub(server, monkeypatch):
    """The server, with no faults or delay, checked for unhandled requests after the test."""
    # Another test module may set HF_HUB_OFFLINE=1 at import, before huggingface_hub
    # is first imported, freezing offline mode for the whole session; these tests
    # need the (local) network, so lift it for their duration only.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    server.set_faults()
    server.set_delay(0.0)
    seen = len(server.unhandled)
    yield server
    server.set_faults()
    server.set_delay(0.0)
    assert server.unhandled[seen:] == [], "the client used routes the test Hub does not implement"


@pytest.fixture
def repo_id(request):
    # Unique per test (and per run): the server and HF_HOME cache may be shared.
    return f"kit-tests/{request.node.name[5:45]}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def api():
    return HfApi()


def _write(folder, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = os.path.join(folder, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


# Picked so that error_rate=0.3 fails at least one request of the fault test.
SERVER_ERROR_SEED = 1
INPUT_IDS = torch.tensor([[1, 5, 9, 17, 33, 2, 60, 7]])


# ---- repos ---------------------------------------------------------------


def test_create_repo_returns_its_url_and_exist_ok_accepts_an_existing_repo(hub, api, repo_id):
    url = api.create_repo(repo_id)
    assert url == f"{hub.url}/{repo_id}" and url.repo_id == repo_id
    assert api.create_repo(repo_id, exist_ok=True).repo_id == repo_id
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(repo_id)
    assert err.value.response.status_code == 409
    # A new repo holds one initial commit, as on the real Hub.
    assert list(hub.files(repo_id)) == [".gitattributes"]


def test_a_private_dataset_repo_is_stored_private_and_hidden_from_anonymous_readers(hub, api, repo_id):
    url = api.create_repo(repo_id, repo_type="dataset", private=True)
    assert url == f"{hub.url}/datasets/{repo_id}"
    assert hub.is_private(repo_id, repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b'{"a": 1}\n', path_in_repo="data/train.jsonl", repo_id=repo_id, repo_type="dataset"
    )
    info = api.dataset_info(repo_id)
    assert info.private is True and [s.rfilename for s in info.siblings] == [".gitattributes", "data/train.jsonl"]
    assert hub.files(repo_id, repo_type="dataset")["data/train.jsonl"] == b'{"a": 1}\n'
    # Same id, wrong type: another repo entirely.
    assert not api.repo_exists(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).dataset_info(repo_id)


def test_upload_folder_and_upload_file_each_make_one_commit_with_the_exact_bytes(hub, api, repo_id, tmp_path):
    api.create_repo(repo_id)
    payload = {
        "config.json": b'{"x": 1}',
        "weights/adapter.safetensors": bytes(range(256)) * 40,
        "weights/deep/empty.txt": b"",
    }
    _write(tmp_path, payload)
    info = api.upload_folder(folder_path=tmp_path, repo_id=repo_id, commit_message="first upload")
    assert len(info.oid) == 40 and info.commit_url.endswith(f"/{repo_id}/commit/{info.oid}")
    api.upload_file(path_or_fileobj=b"# card\n", path_in_repo="README.md", repo_id=repo_id)

    commits = hub.commits(repo_id)
    assert [c["summary"] for c in commits] == [
        "initial commit",
        "first upload",
        "Upload README.md with huggingface_hub",
    ]
    assert commits[1]["sha"] == info.oid
    assert hub.files(repo_id) == {
        ".gitattributes": hub.files(repo_id)[".gitattributes"],
        "README.md": b"# card\n",
        **payload,
    }
    assert sorted(api.list_repo_files(repo_id)) == sorted([".gitattributes", "README.md", *payload])
    top = {(e.path, type(e).__name__) for e in api.list_repo_tree(repo_id)}
    assert top == {
        (".gitattributes", "RepoFile"),
        ("README.md", "RepoFile"),
        ("config.json", "RepoFile"),
        ("weights", "RepoFolder"),
    }
    under = {e.path: getattr(e, "size", None) for e in api.list_repo_tree(repo_id, "weights", recursive=True)}
    assert under == {"weights/adapter.safetensors": 10240, "weights/deep": None, "weights/deep/empty.txt": 0}
    # Unchanged files are skipped by the client (preupload reports their oid): no empty commit.
    api.upload_folder(folder_path=tmp_path, repo_id=repo_id)
    assert len(hub.commits(repo_id)) == 3


def test_create_commit_deletes_files_and_folders_and_refuses_a_stale_parent(hub, api, repo_id):
    api.create_repo(repo_id)
    first = api.create_commit(
        repo_id,
        [CommitOperationAdd(p, p.encode()) for p in ("keep.txt", "old.txt", "ckpt/a.bin", "ckpt/sub/b.bin")],
        commit_message="add",
    )
    second = api.create_commit(
        repo_id,
        [CommitOperationDelete("old.txt"), CommitOperationDelete("ckpt/"), CommitOperationAdd("new.txt", b"n")],
        commit_message="prune",
        parent_commit=first.oid,
    )
    assert sorted(hub.files(repo_id)) == [".gitattributes", "keep.txt", "new.txt"]
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(
            repo_id, [CommitOperationAdd("late.txt", b"x")], commit_message="late", parent_commit=first.oid
        )
    assert err.value.response.status_code == 412
    with pytest.raises(RemoteEntryNotFoundError):
        api.create_commit(repo_id, [CommitOperationDelete("never-was.txt")], commit_message="bad delete")
    # Refused commits leave no trace; the old snapshot is still whole.
    assert hub.commits(repo_id)[-1]["sha"] == second.oid
    assert "late.txt" not in hub.files(repo_id)
    assert sorted(hub.files(repo_id, revision=first.oid)) == [
        ".gitattributes",
        "ckpt/a.bin",
        "ckpt/sub/b.bin",
        "keep.txt",
        "old.txt",
    ]


def test_refs_and_existence_checks_answer_like_the_hub(hub, api, repo_id):
    assert api.repo_exists(repo_id) is False
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"1", path_in_repo="a/b.txt", repo_id=repo_id)
    assert api.repo_exists(repo_id) is True
    assert api.file_exists(repo_id, "a/b.txt") is True
    assert api.file_exists(repo_id, "a/missing.txt") is False
    refs = api.list_repo_refs(repo_id)
    assert [(b.name, b.ref, b.target_commit) for b in refs.branches] == [
        ("main", "refs/heads/main", hub.commits(repo_id)[-1]["sha"])
    ]
    assert refs.tags == [] and refs.converts == []
    assert api.repo_info(repo_id).sha == refs.branches[0].target_commit


def test_commit_history_and_branches_follow_git_semantics(hub, api, repo_id):
    api.create_repo(repo_id)
    one = api.upload_file(path_or_fileobj=b"1", path_in_repo="n.txt", repo_id=repo_id, commit_message="one")
    api.create_branch(repo_id, branch="exp", revision=one.oid)
    two = api.upload_file(path_or_fileobj=b"2", path_in_repo="n.txt", repo_id=repo_id, commit_message="two")
    api.upload_file(
        path_or_fileobj=b"x", path_in_repo="n.txt", repo_id=repo_id, revision="exp", commit_message="on exp"
    )
    assert [c.title for c in api.list_repo_commits(repo_id)] == ["two", "one", "initial commit"]
    assert [c.title for c in api.list_repo_commits(repo_id, revision="exp")] == ["on exp", "one", "initial commit"]
    assert hub.files(repo_id)["n.txt"] == b"2" and hub.files(repo_id, revision="exp")["n.txt"] == b"x"
    assert {b.name for b in api.list_repo_refs(repo_id).branches} == {"main", "exp"}
    assert api.repo_info(repo_id, revision=two.oid[:7]).sha == two.oid  # short shas resolve too


def test_an_old_commit_stays_downloadable_by_its_sha(hub, api, repo_id):
    api.create_repo(repo_id)
    v1 = api.upload_file(path_or_fileobj=b"version one", path_in_repo="state.json", repo_id=repo_id)
    api.upload_file(path_or_fileobj=b"version two!", path_in_repo="state.json", repo_id=repo_id)
    with open(hf_hub_download(repo_id, "state.json")) as fh:
        assert fh.read() == "version two!"
    with open(hf_hub_download(repo_id, "state.json", revision=v1.oid)) as fh:
        assert fh.read() == "version one"
    # The HEAD the client saw carried the commit, the content hash and the true size.
    heads = [r for r in hub.requests if r.method == "HEAD" and r.path.endswith(f"{v1.oid}/state.json")]
    assert heads and heads[-1].status == 200


def test_snapshot_download_fetches_only_the_allowed_patterns_into_local_dir(hub, api, repo_id, tmp_path):
    api.create_repo(repo_id)
    src = tmp_path / "src"
    _write(
        src,
        {
            "shard-00/adapter/adapter_config.json": b"{}",
            "shard-00/adapter/w.safetensors": b"w" * 3000,
            "shard-01/adapter/adapter_config.json": b"{}",
            "status/shard-00.json": b'{"step": 3}',
        },
    )
    api.upload_folder(folder_path=src, repo_id=repo_id)
    out = tmp_path / "out"
    snapshot_download(repo_id, allow_patterns=["shard-00/*"], local_dir=out)
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts)
    assert got == ["shard-00/adapter/adapter_config.json", "shard-00/adapter/w.safetensors"]
    assert (out / "shard-00/adapter/w.safetensors").read_bytes() == b"w" * 3000


def test_a_missing_file_revision_or_repo_raises_the_matching_error(hub, api, repo_id):
    api.create_repo(repo_id)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "nope.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id + "-absent", "config.json")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(repo_id, revision="f" * 40)


def test_a_write_without_a_token_is_refused_and_changes_nothing(hub, api, repo_id):
    api.create_repo(repo_id)
    before = hub.commits(repo_id)
    anonymous = HfApi(token=False)
    with pytest.raises(HfHubHTTPError) as err:
        anonymous.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id)
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError):
        anonymous.create_repo(repo_id + "-anon")
    assert hub.commits(repo_id) == before and not hub.repo_exists(repo_id + "-anon")


def test_the_token_travels_only_in_the_authorization_header(hub, api, repo_id, tmp_path):
    first = len(hub.requests)
    api.create_repo(repo_id)
    _write(tmp_path, {"a.txt": b"a", "b/c.txt": b"c"})
    api.upload_folder(folder_path=tmp_path, repo_id=repo_id)
    snapshot_download(repo_id, local_dir=tmp_path / "out")
    mine = hub.requests[first:]
    assert mine and all(r.headers.get("authorization") == f"Bearer {FAKE_TOKEN}" for r in mine)
    for r in mine:
        other_headers = {k: v for k, v in r.headers.items() if k != "authorization"}
        assert FAKE_TOKEN not in f"{r.path}?{r.query}{other_headers}" and FAKE_TOKEN.encode() not in r.body
    assert not any(FAKE_TOKEN.encode() in data for data in hub.files(repo_id).values())


def test_head_on_resolve_carries_commit_etag_and_true_size_without_a_body(hub, api, repo_id):
    api.create_repo(repo_id)
    data = b"0123456789" * 7
    sha = api.upload_file(path_or_fileobj=data, path_in_repo="d/f.bin", repo_id=repo_id).oid
    request = urllib.request.Request(f"{hub.url}/{repo_id}/resolve/main/d/f.bin", method="HEAD")
    with urllib.request.urlopen(request) as response:
        assert response.headers["X-Repo-Commit"] == sha
        assert response.headers["ETag"] == f'"{git_blob_oid(data)}"'
        assert response.headers["Content-Length"] == str(len(data)) and response.read() == b""
    with urllib.request.urlopen(f"{hub.url}/{repo_id}/resolve/{sha}/d/f.bin") as response:
        assert response.read() == data


def test_an_unimplemented_route_is_refused_with_404_and_recorded(hub):
    seen = len(hub.unhandled)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(f"{hub.url}/api/models/a/b/settings", method="PUT"))
    assert err.value.code == 404 and "Not implemented by the test Hub" in json.loads(err.value.read())["error"]
    assert hub.unhandled[seen:] == ["PUT /api/models/a/b/settings: unknown model repo API route"]
    del hub.unhandled[seen:]  # expected here; the fixture checks for unexpected ones


# ---- transformers and peft -------------------------------------------------


def test_a_tiny_llama_pushed_with_transformers_loads_back_with_identical_outputs(hub, repo_id):
    from transformers import AutoModelForCausalLM

    model = _tiny_llama()
    model.push_to_hub(repo_id, commit_message="tiny llama")
    assert {"config.json", "model.safetensors"} <= set(hub.files(repo_id))
    loaded = AutoModelForCausalLM.from_pretrained(repo_id).eval()
    with torch.no_grad():
        assert torch.equal(model(INPUT_IDS).logits, loaded(INPUT_IDS).logits)


def test_a_lora_adapter_in_a_shard_subfolder_loads_back_with_identical_outputs(hub, api, repo_id, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = _tiny_llama()
    pristine_base = copy.deepcopy(base)  # get_peft_model wraps `base` in place
    # init_lora_weights=False: random B, so the adapter really changes the outputs.
    lora = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).eval()
    lora.save_pretrained(tmp_path / "adapter")
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=tmp_path / "adapter", path_in_repo="shard-00/adapter", repo_id=repo_id)
    assert {"shard-00/adapter/adapter_config.json", "shard-00/adapter/adapter_model.safetensors"} <= set(
        hub.files(repo_id)
    )

    loaded = PeftModel.from_pretrained(pristine_base, repo_id, subfolder="shard-00/adapter").eval()
    with torch.no_grad():
        expected = lora(INPUT_IDS).logits
        assert torch.equal(expected, loaded(INPUT_IDS).logits)
        assert not torch.equal(expected, _tiny_llama()(INPUT_IDS).logits)


# ---- faults ------------------------------------------------------------------


def test_upload_folder_survives_injected_server_errors_through_client_retries(hub, api, tmp_path):
    # A fixed repo id (not the per-run random one) so the seeded faults hit the
    # same requests on every run: the fault draw hashes the request path.
    repo_id = "kit-tests/upload-under-server-errors"
    api.delete_repo(repo_id, missing_ok=True)
    api.create_repo(repo_id)
    _write(tmp_path, {f"f{i}.txt": str(i).encode() for i in range(5)})
    # The client retries preupload, info and tree calls with 1, 2, 4, 8 s backoff,
    # but sends the commit itself only once, so only the retried routes may fail;
    # max_faults=3 bounds the sleeping to 1 + 2 + 4 s.
    hub.set_faults(
        error_rate=0.3, seed=SERVER_ERROR_SEED, paths=[r"/preupload/", r"/tree/", r"/revision/"], max_faults=3
    )
    started = time.monotonic()
    api.upload_folder(folder_path=tmp_path, repo_id=repo_id)
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "f0.txt", "f1.txt", "f2.txt", "f3.txt", "f4.txt"]
    api.upload_file(path_or_fileobj=b"again", path_in_repo="f0.txt", repo_id=repo_id)
    assert hub.faults_injected >= 1 and time.monotonic() - started < 30
    failed = [r for r in hub.requests if r.status == 500 and repo_id in r.path]
    assert failed and all(r.fault == "error" for r in failed)
    assert hub.files(repo_id)["f0.txt"] == b"again" and hub.files(repo_id)["f4.txt"] == b"4"


def test_a_dropped_or_lost_commit_applies_fully_or_not_at_all(hub, api, repo_id):
    api.create_repo(repo_id)
    ops = lambda: [CommitOperationAdd(f"x{i}.bin", bytes([i]) * 100) for i in range(4)]  # noqa: E731
    hub.set_faults(drop_rate=1.0, paths=[r"/commit/"])
    with pytest.raises(Exception):  # noqa: B017  (whatever the client raises for a dropped connection)
        api.create_commit(repo_id, ops(), commit_message="dropped")
    assert sorted(hub.files(repo_id)) == [".gitattributes"]
    # Lost response: the commit lands whole although the client saw an error.
    hub.set_faults(lost_rate=1.0, paths=[r"/commit/"])
    with pytest.raises(Exception):  # noqa: B017  (whatever the client raises for a lost response)
        api.create_commit(repo_id, ops(), commit_message="lost")
    hub.set_faults()
    assert sorted(hub.files(repo_id)) == [".gitattributes", "x0.bin", "x1.bin", "x2.bin", "x3.bin"]
    assert [c["summary"] for c in hub.commits(repo_id)] == ["initial commit", "lost"]


def test_downloads_survive_dropped_connections_and_slow_uploads_are_slow(hub, api, repo_id, tmp_path):
    api.create_repo(repo_id)
    hub.set_delay(0.5, paths=[r"/commit/"])
    started = time.monotonic()
    api.upload_file(path_or_fileobj=b"z" * 5000, path_in_repo="z.bin", repo_id=repo_id)
    assert time.monotonic() - started >= 0.5
    hub.set_delay(0.0)
    # The first download GET is dropped without an answer; the client reconnects.
    hub.set_faults(drop_rate=1.0, methods=["GET"], paths=[r"/resolve/"], max_faults=1)
    path = hf_hub_download(repo_id, "z.bin", local_dir=tmp_path)
    with open(path, "rb") as fh:
        assert fh.read() == b"z" * 5000
    assert hub.faults_injected == 1
