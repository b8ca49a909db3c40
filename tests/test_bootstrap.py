"""The install cell (kit/bootstrap.py): one source for every notebook, runnable before anything is installed.

    .venv/bin/python -m pytest -q tests/test_bootstrap.py    # ~30 s, no network (local test Hub)

tests/test_fresh_runtime.py runs the whole cell on a fresh runtime; these tests cover
its parts: where the wheel is found, what pip is given, and the errors that name the
parameter to set.
"""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import load_script

from kit.bootstrap import KitInstallError, install_extras, install_kit, pip_install, pip_target, run_wheel
from kit.wheel import build_wheel, kit_version

ROOT = Path(__file__).resolve().parent.parent


def test_every_notebook_holds_the_install_cell_written_from_kit_bootstrap():
    assert load_script("sync_notebooks").drifted() == [], "run `python scripts/sync_notebooks.py`"


def test_the_install_cell_defines_itself_on_a_bare_interpreter():
    cell = load_script("sync_notebooks").install_cell("data")
    body = cell.rsplit("install_kit(", 1)[0]  # everything but the call
    # -S: no site-packages, so any import of kit, transformers or huggingface_hub at the top would fail here.
    proc = subprocess.run([sys.executable, "-S", "-c", body], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_folder_split_names_its_wheel_in_its_manifest(tmp_path):
    (tmp_path / "kit").mkdir()
    (tmp_path / "kit" / "kit-9.9-py3-none-any.whl").write_bytes(b"wheel")
    (tmp_path / "manifest.json").write_text(
        json.dumps({"kit": {"version": "9.9", "wheel": "kit/kit-9.9-py3-none-any.whl"}})
    )
    assert run_wheel(str(tmp_path)) == ("9.9", str((tmp_path / "kit" / "kit-9.9-py3-none-any.whl").resolve()))
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {}}))
    assert run_wheel(str(tmp_path)) == (None, None), "a split pushed by an older kit names no wheel"
    with pytest.raises(KitInstallError, match="data='/no/such/split': no manifest.json"):
        run_wheel("/no/such/split")


def test_a_hub_split_carries_the_wheel_of_the_kit_that_pushed_it(hub, small_split, tmp_path):
    from kit.data.shards import push_split

    repo = f"kit-tester/boot-{uuid.uuid4().hex[:6]}"
    push_split(small_split, f"hf://datasets/{repo}")
    version, wheel = run_wheel(f"hf://datasets/{repo}")
    assert version == kit_version()
    assert Path(wheel).read_bytes() == build_wheel(tmp_path).read_bytes()
    manifest = json.loads(hub.files(repo, "dataset")["manifest.json"])
    assert manifest["kit"] == {"version": kit_version(), "wheel": f"kit/{Path(wheel).name}"}
    assert manifest["files"] == json.loads((small_split / "manifest.json").read_text())["files"]


def test_an_unreachable_hub_is_one_error_that_names_kit_source(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on loopback's discard port
    with pytest.raises(KitInstallError, match=r"could not read the kit wheel from hf://datasets/a/b .*set kit_source"):
        run_wheel("hf://datasets/a/b")


def test_where_kit_is_installed_the_cell_installs_nothing(small_split, capsys):
    install_kit("", str(small_split))  # a local split without a wheel: the installed kit is the one
    assert capsys.readouterr().out.strip() == f"kit {kit_version()} is installed"
    install_kit("git+https://example.invalid/kit.git", "")
    assert "was not needed" in capsys.readouterr().out
    install_kit("", "/no/such/split")  # a wrong path is reported by the cells that read the data, not here
    assert capsys.readouterr().out.startswith(f"kit {kit_version()} is installed (its version could not be checked")


def test_pip_gets_kit_with_its_extras_as_a_url_or_a_path(monkeypatch):
    assert pip_target("git+https://github.com/you/kit.git", ["gpu"]) == "kit[gpu] @ git+https://github.com/you/kit.git"
    assert pip_target("/tmp/kit-0.1.0-py3-none-any.whl", ["gpu"]) == "/tmp/kit-0.1.0-py3-none-any.whl[gpu]"
    assert pip_target("/src/kit", []) == "/src/kit"
    monkeypatch.delenv("KIT_INSTALL_EXTRAS", raising=False)
    assert install_extras(cuda=True) == ["gpu"] and install_extras(cuda=False) == []
    monkeypatch.setenv("KIT_INSTALL_EXTRAS", "gpu")
    assert install_extras(cuda=False) == ["gpu"], "the tests ask for bitsandbytes on CPU"


def test_a_failed_pip_install_is_one_line_naming_kit_source():
    with pytest.raises(KitInstallError, match=r"pip could not install kit from /no/such/kit.whl: .*Set kit_source"):
        pip_install("/no/such/kit.whl")


def test_a_saved_hugging_face_login_is_the_last_place_the_token_comes_from(monkeypatch):
    import os

    from kit.hf_token import find_token

    monkeypatch.setitem(sys.modules, "google.colab", None)
    monkeypatch.setitem(sys.modules, "kaggle_secrets", None)
    monkeypatch.delenv("HF_TOKEN")
    token_file = Path(os.environ["HF_HOME"]) / "token"  # where `hf auth login` and notebook_login() save it
    token_file.write_text("hf_saved_by_login")
    try:
        assert find_token() == "hf_saved_by_login"
        monkeypatch.setenv("HF_TOKEN", "from-env")
        assert find_token() == "from-env", "the environment comes before a saved login"
    finally:
        token_file.unlink()
    monkeypatch.delenv("HF_TOKEN")
    assert find_token() is None
