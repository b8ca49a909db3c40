"""The Hub as the fleet's disk: kit/remote.py (both backends), split --push-to, train from and to hf://,
the background checkpoint uploader, the model card, and where the token comes from.

    .venv/bin/python -m pytest -q tests/test_remote.py    # ~1 min on 2 cores; no network (local test Hub)

The Hub is tests/hub_server.py behind the real huggingface_hub client (conftest
points HF_ENDPOINT at it and sets HF_TOKEN to hub_env.FAKE_TOKEN).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import types
import uuid
from pathlib import Path

import pytest
import yaml
from hub_env import FAKE_TOKEN

from kit import remote as remote_mod
from kit.config import load_config
from kit.errors import MissingTokenError, RemoteError, UploadError
from kit.hf_token import find_token
from kit.layout import METRICS, POINTER
from kit.model_card import render_model_card
from kit.remote import FolderRemote, is_conflict, open_remote
from kit.sync import CheckpointUploader, ShardSync

TINY = ["train.max_steps=2", "train.save_steps=2", "eval.generate_samples=2", "eval.max_new_tokens=8"]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(params=["hub", "folder"])
def any_remote(request, tmp_path):
    if request.param == "hub":
        request.getfixturevalue("hub")
        return open_remote(f"hf://kit-tester/{unique('remote')}")
    return open_remote(tmp_path / "remote")


# ---- one interface, two backends -------------------------------------------------------------


def test_both_backends_commit_read_list_download_and_delete_the_same_way(any_remote, tmp_path):
    any_remote.ensure_exists()
    assert any_remote.read_json("a/missing.json") is None
    (tmp_path / "big.bin").write_bytes(b"\x00\x01" * 1000)
    any_remote.commit({"a/x/big.bin": tmp_path / "big.bin", "a/x/n.json": b'{"n": 1}', "b/y.txt": b"y"}, "first")
    assert any_remote.read_json("a/x/n.json") == {"n": 1}
    assert any_remote.list_files("a/") == ["a/x/big.bin", "a/x/n.json"]
    local = any_remote.download(["a/x/", "b/y.txt", "not/there.txt"], tmp_path / "down")
    assert (local / "a/x/big.bin").read_bytes() == b"\x00\x01" * 1000
    assert (local / "b/y.txt").read_bytes() == b"y"
    any_remote.commit({"c.txt": b"c"}, "second", delete_folders=["a/x", "never/was"])
    assert any_remote.list_files("a/") == [] and any_remote.read_bytes("c.txt") == b"c"


def test_both_backends_land_a_conditional_commit_only_on_the_head_it_read(any_remote):
    any_remote.ensure_exists()
    any_remote.commit({"a.txt": b"1"}, "first")
    head = any_remote.head()
    any_remote.commit({"a.txt": b"2"}, "on the head it read", retries=False, parent_commit=head)
    with pytest.raises(Exception) as refused:  # the head moved: the Hub answers 412, a folder its own conflict
        any_remote.commit({"a.txt": b"3", "b.txt": b"b"}, "on a head that moved", retries=False, parent_commit=head)
    assert is_conflict(refused.value)
    assert any_remote.read_bytes("a.txt") == b"2" and any_remote.read_bytes("b.txt") is None
    if isinstance(any_remote, FolderRemote):  # nor a staged copy of it
        assert sorted(p.name for p in any_remote.root.iterdir()) == [remote_mod.FOLDER_HEAD, "a.txt"]


def test_a_folder_lock_left_by_a_writer_that_died_holding_it_is_broken_once_stale(tmp_path, capsys):
    remote = FolderRemote(tmp_path / "remote")
    remote.ensure_exists()
    lock = tmp_path / "remote" / remote_mod.FOLDER_LOCK
    lock.write_text("colab pid 7 0123abcd")
    old = time.time() - remote_mod.LOCK_STALE_S - 1
    os.utime(lock, (old, old))
    remote.commit({"a.txt": b"1"}, "after the crash")
    assert remote.read_bytes("a.txt") == b"1" and not lock.exists()
    out = capsys.readouterr().out
    assert "broke .kit-lock" in out and "by colab pid 7 0123abcd" in out


def test_hub_repos_are_created_private_unless_asked(hub):
    private, public = unique("private"), unique("public")
    open_remote(f"hf://kit-tester/{private}").ensure_exists()
    open_remote(f"hf://datasets/kit-tester/{public}").ensure_exists(private=False)
    assert hub.is_private(f"kit-tester/{private}")
    assert not hub.is_private(f"kit-tester/{public}", repo_type="dataset")


def test_a_malformed_hub_address_names_the_expected_forms():
    with pytest.raises(RemoteError, match=r"hf://USER/REPO .* hf://datasets/USER/REPO"):
        open_remote("hf://just-a-name")


# ---- split --push-to, train --data hf:// ------------------------------------------------------


def test_split_pushes_to_the_hub_and_train_downloads_only_its_shard(hub, demo_data, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kit.cli import main
    from kit.train import train_shard

    data_repo, run_repo = f"kit-tester/{unique('data')}", f"kit-tester/{unique('run')}"
    src = tmp_path / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in demo_data.generate(40, seed=3)))
    assert (
        main(
            [
                "split",
                str(src),
                "--shards",
                "3",
                "--eval-fraction",
                "0.1",
                "--out",
                str(tmp_path / "shards"),
                "--push-to",
                f"hf://datasets/{data_repo}",
            ]
        )
        == 0
    )
    pushed = hub.files(data_repo, repo_type="dataset")
    assert {"manifest.json", "eval.jsonl", "shard-00.jsonl", "shard-01.jsonl", "shard-02.jsonl"} <= set(pushed)
    assert hub.is_private(data_repo, repo_type="dataset")

    hub.clear_log()
    metrics = train_shard(
        load_config("cpu-tiny", TINY), f"hf://datasets/{data_repo}", 1, f"hf://{run_repo}", work_dir=tmp_path / "work"
    )
    fetched = {
        r.path.rsplit("/", 1)[-1]
        for r in hub.requests
        if r.method == "GET" and "/datasets/" in r.path and "/resolve/" in r.path
    }
    assert fetched == {"manifest.json", "eval.jsonl", "shard-01.jsonl"}, "downloads its own shard and nothing else"

    files = hub.files(run_repo)
    assert json.loads(files["shard-01/latest.json"])["checkpoint"] == "checkpoint-2"
    assert json.loads(files["shard-01/metrics.json"])["eval_loss"] == pytest.approx(metrics["eval_loss"])
    status = json.loads(files["shard-01/status.json"])
    assert status["state"] == "done" and status["step"] == status["max_steps"] == 2 and status["platform"] == "local"
    card = files["shard-01/adapter/README.md"].decode()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert meta["datasets"] == [data_repo] and "base_model" not in meta  # the tiny model is a local folder
    assert "## Metrics" in card and "eval_loss" in card and 'subfolder="shard-01/adapter"' not in card
    assert "subfolder='shard-01/adapter'" in card
    assert "## How to prompt\n\nPrompt with the chat template's own generation prompt" in card
    assert "shard-01/adapter/metrics.json" in files

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_repo, subfolder="shard-01/adapter"
    )
    assert model.peft_config["default"].r == 8


def test_a_shard_checksum_mismatch_on_the_hub_is_refused(hub, small_split, tmp_path):
    from kit.data.shards import fetch_split, load_shard, push_split
    from kit.errors import ShardError

    repo = f"kit-tester/{unique('data')}"
    push_split(small_split, f"hf://datasets/{repo}")
    open_remote(f"hf://datasets/{repo}").commit({"shard-00.jsonl": b'{"prompt": "p", "completion": "c"}\n'}, "tamper")
    with pytest.raises(ShardError, match="checksum"):
        load_shard(fetch_split(f"hf://datasets/{repo}", 0, tmp_path), 0)


# ---- the background uploader ------------------------------------------------------------------


class SlowFolder(FolderRemote):
    """A folder remote whose commits take a while and can fail the first `fail` times."""

    def __init__(self, root, seconds=0.0, fail=0):
        super().__init__(root)
        self.seconds, self.fail, self.messages = seconds, fail, []

    def _commit_once(self, files, message, delete_folders, parent_commit=None):
        time.sleep(self.seconds)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("injected")
        self.messages.append(message)
        super()._commit_once(files, message, delete_folders, parent_commit)


def fake_checkpoint(root: Path, step: int) -> tuple[Path, Path]:
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "weights.bin").write_bytes(bytes([step]) * 100)
    staged = root / ".push" / ckpt.name
    staged.mkdir(parents=True)
    (staged / "weights.bin").write_bytes(bytes([step]) * 100)
    return ckpt, staged


def test_the_newest_checkpoint_replaces_a_queued_older_one_and_the_pointer_comes_last(tmp_path):
    remote = SlowFolder(tmp_path / "remote", seconds=0.3)
    uploader = CheckpointUploader(remote, "shard-00")
    started = time.monotonic()
    uploader.submit(*fake_checkpoint(tmp_path / "run", 2), status={"step": 2})
    while not uploader._busy:  # checkpoint-2 in flight; then 4 is queued and 6 replaces it
        time.sleep(0.001)
    for step in (4, 6):
        uploader.submit(*fake_checkpoint(tmp_path / "run", step), status={"step": step})
    assert time.monotonic() - started < 0.2, "submit never waits for the network"
    uploader.wait()
    assert uploader.landed == ["checkpoint-2", "checkpoint-6"], "checkpoint-4 was queued, then replaced"
    assert remote.messages == [
        "shard-00/checkpoint-2: upload",
        "shard-00: latest = checkpoint-2",
        "shard-00/checkpoint-6: upload",
        "shard-00: latest = checkpoint-6",
    ]
    assert remote.read_json(f"shard-00/{POINTER}")["checkpoint"] == "checkpoint-6"
    assert remote.list_files("shard-00/checkpoint-") == ["shard-00/checkpoint-6/weights.bin"], "older ones deleted"


def test_a_failed_push_is_retried_until_it_lands(tmp_path, monkeypatch):
    monkeypatch.setattr(remote_mod, "RETRY_BASE_DELAY_S", 0.01)
    remote = SlowFolder(tmp_path / "remote", fail=3)
    uploader = CheckpointUploader(remote, "shard-00")
    uploader.submit(*fake_checkpoint(tmp_path / "run", 2), status={})
    uploader.wait()
    assert uploader.landed == ["checkpoint-2"] and remote.read_json(f"shard-00/{POINTER}")["step"] == 2


def test_a_checkpoint_is_staged_whole_even_when_its_marker_is_listed_first(tmp_path, monkeypatch):
    # Directory order is the filesystem's: tmpfs lists the newest entry (COMPLETE) first.
    from kit import sync as sync_mod

    ckpt = tmp_path / "run" / "checkpoint-2"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"w")
    (ckpt / "sub" / "rng_state.pth").write_bytes(b"r")
    (ckpt / "COMPLETE").write_text("complete\n")
    real_rglob = Path.rglob
    monkeypatch.setattr(
        Path, "rglob", lambda self, pattern: sorted(real_rglob(self, pattern), key=lambda p: p.name != "COMPLETE")
    )
    staged = tmp_path / "run" / ".push" / "checkpoint-2"
    sync_mod._snapshot(ckpt, staged)
    assert sorted(p.relative_to(staged).as_posix() for p in real_rglob(staged, "*") if p.is_file()) == [
        "COMPLETE",
        "adapter_model.safetensors",
        "sub/rng_state.pth",
    ]


def test_the_final_push_names_what_did_not_land(tmp_path, monkeypatch):
    monkeypatch.setattr(remote_mod, "RETRY_BASE_DELAY_S", 0.001)
    run_dir = tmp_path / "work" / "shard-00"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"w")
    (run_dir / "metrics.json").write_text(json.dumps({"eval_loss": 1.0, "config": {}}))
    sync = ShardSync(SlowFolder(tmp_path / "remote", fail=10**6), tmp_path / "work", 0)
    sync.callbacks()
    sync._uploader.submit(*fake_checkpoint(tmp_path / "run", 2), status={})
    with pytest.raises(UploadError, match=r"shard-00/checkpoint-2 .*shard-00/adapter and shard-00/metrics.json"):
        sync.push_final(run_dir, {"eval_loss": 1.0, "config": {}})


# ---- model card and token ---------------------------------------------------------------------


def test_a_model_card_is_yaml_front_matter_then_sections():
    card = render_model_card(
        {"base_model": "b", "library_name": "peft", "tags": ["x"], "datasets": None},
        "Title",
        [("Metrics", "| a | b |"), ("Load", "code")],
    )
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert yaml.safe_load(front) == {"base_model": "b", "library_name": "peft", "tags": ["x"]}
    assert (
        body.startswith("\n# Title")
        and "## Metrics\n\n| a | b |" in body
        and body.index("## Metrics") < body.index("## Load")
    )


def test_a_model_card_refuses_anything_shaped_like_a_token():
    with pytest.raises(ValueError, match="token"):
        render_model_card({}, "t", [("oops", "hf_" + "a" * 34)])


def fake_module(name, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    return module


def install_colab(monkeypatch, secret):
    def get(key):
        if secret is None:
            raise KeyError(key)  # what a missing Colab secret does, roughly (SecretNotFoundError)
        return secret

    monkeypatch.setitem(sys.modules, "google", fake_module("google"))
    monkeypatch.setitem(
        sys.modules, "google.colab", fake_module("google.colab", userdata=fake_module("userdata", get=get))
    )


def install_kaggle(monkeypatch, secret):
    class UserSecretsClient:
        def get_secret(self, key):
            if secret is None:
                raise RuntimeError("no secret")
            return secret

    monkeypatch.setitem(
        sys.modules, "kaggle_secrets", fake_module("kaggle_secrets", UserSecretsClient=UserSecretsClient)
    )


def test_the_token_comes_from_colab_then_kaggle_then_the_environment(monkeypatch):
    monkeypatch.setitem(sys.modules, "google.colab", None)  # None in sys.modules: import fails, as off Colab
    monkeypatch.setitem(sys.modules, "kaggle_secrets", None)
    monkeypatch.setenv("HF_TOKEN", "from-env")
    assert find_token() == "from-env"
    install_kaggle(monkeypatch, "from-kaggle")
    assert find_token() == "from-kaggle"
    install_colab(monkeypatch, "from-colab")
    assert find_token() == "from-colab"
    install_colab(monkeypatch, None)  # Colab without the secret falls through to Kaggle
    assert find_token() == "from-kaggle"
    install_kaggle(monkeypatch, None)
    assert find_token() == "from-env"
    monkeypatch.delenv("HF_TOKEN")
    assert find_token() is None


def test_a_push_without_a_token_fails_before_training_and_says_where_to_put_it(hub, small_split, monkeypatch, capsys):
    import kit.train
    from kit.cli import main

    monkeypatch.setitem(sys.modules, "google.colab", None)
    monkeypatch.setitem(sys.modules, "kaggle_secrets", None)
    monkeypatch.delenv("HF_TOKEN")
    loaded = threading.Event()
    monkeypatch.setattr(kit.train, "load_base_model", lambda *a, **k: loaded.set())
    monkeypatch.setattr(kit.train, "load_shard", lambda *a, **k: loaded.set())
    with pytest.raises(MissingTokenError) as err:
        kit.train.train_shard(load_config("cpu-tiny"), small_split, 0, "hf://kit-tester/no-token")
    for where in ("key icon", "Notebook access", "Add-ons -> Secrets", "export HF_TOKEN"):
        assert where in str(err.value)
    assert not loaded.is_set() and not hub.requests, "nothing loaded, nothing sent"
    assert (
        main(
            [
                "train",
                "--preset",
                "cpu-tiny",
                "--data",
                str(small_split),
                "--shard",
                "0",
                "--output",
                "hf://kit-tester/no-token",
            ]
        )
        == 2
    )
    assert "HF_TOKEN" in capsys.readouterr().err


def test_the_remote_never_shows_the_token():
    assert FAKE_TOKEN not in repr(open_remote("hf://kit-tester/x", token=FAKE_TOKEN))


# ---- faults, secrets ---------------------------------------------------------------------------


def test_training_survives_a_flaky_hub_and_everything_lands(hub, small_split, tmp_path):
    from kit.train import train_shard

    data, run = f"kit-tester/{unique('data')}", f"kit-tester/{unique('flaky')}"
    from kit.data.shards import push_split

    push_split(small_split, f"hf://datasets/{data}")
    # 500s, dropped connections and commits applied whose answer is lost, on the run repo and the data.
    hub.set_faults(
        error_rate=0.25,
        drop_rate=0.1,
        lost_rate=0.1,
        seed=7,
        max_faults=5,  # fewer than one call's 6 tries: however the faults fall, no single call can run out
        paths=[rf"/{run}/(commit|preupload|resolve|tree)", rf"/datasets/{data}/resolve/"],
    )
    overrides = ["train.max_steps=4", "train.save_steps=2", "eval.generate_samples=2", "eval.max_new_tokens=8"]
    metrics = train_shard(
        load_config("cpu-tiny", overrides), f"hf://datasets/{data}", 0, f"hf://{run}", work_dir=tmp_path / "work"
    )
    assert hub.faults_injected > 0
    hub.set_faults()
    files = hub.files(run)
    latest = json.loads(files["shard-00/latest.json"])
    assert latest["checkpoint"] == "checkpoint-4"
    import hashlib

    for name, digest in latest["files"].items():
        assert hashlib.sha256(files[f"shard-00/checkpoint-4/{name}"]).hexdigest() == digest
    assert json.loads(files[f"shard-00/{METRICS}"])["eval_loss"] == pytest.approx(metrics["eval_loss"])
    local = (tmp_path / "work" / "shard-00" / "adapter" / "adapter_model.safetensors").read_bytes()
    assert files["shard-00/adapter/adapter_model.safetensors"] == local


def test_the_token_appears_in_no_notebook_log_pushed_file_or_request_body(
    hub, small_split, tmp_path, monkeypatch, tiny_model_dir
):
    import papermill

    data, run = f"kit-tester/{unique('data')}", f"kit-tester/{unique('secret')}"
    from kit.data.shards import push_split

    push_split(small_split, f"hf://datasets/{data}")
    # A cache of our own (models linked in), so the work dir and its logs can be searched whole.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(tiny_model_dir.parent)
    monkeypatch.setenv("KIT_CACHE", str(cache))
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + ":" + __import__("os").environ["PATH"])
    assert __import__("os").environ["HF_TOKEN"] == FAKE_TOKEN
    out = tmp_path / "executed.ipynb"
    root = Path(__file__).resolve().parent.parent
    papermill.execute_notebook(
        str(root / "notebooks" / "train_shard.ipynb"),
        str(out),
        cwd=str(tmp_path),
        progress_bar=False,
        log_output=False,
        parameters=dict(
            shard_index=0,
            preset="cpu-tiny",
            data=f"hf://datasets/{data}",
            output=f"hf://{run}",
            overrides="train.max_steps=2; train.save_steps=2; eval.generate_samples=2; eval.max_new_tokens=8",
        ),
    )
    secret = FAKE_TOKEN.encode()
    assert "shard-00/adapter/README.md" in hub.files(run)
    assert any(secret in r.headers.get("authorization", "").encode() for r in hub.requests), "the needle is right"
    leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]
    leaks += [f"{c['sha']}:{path}" for c in hub.commits(run) for path, blob in c["files"].items() if secret in blob]
    leaks += [f"{r.method} {r.path}" for r in hub.requests if secret in r.body or secret in r.query.encode()]
    assert not leaks, f"the token leaked into: {leaks}"
