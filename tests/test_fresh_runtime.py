"""Run all of train_shard.ipynb on a fresh Colab/Kaggle-like runtime: the notebook alone, kit not installed.

    .venv/bin/python -m pytest -q tests/test_fresh_runtime.py    # ~3-4 min: builds a venv (pip's cache helps)

The runtime is a venv with what Colab ships and kit does not: torch 2.13.0, the
Jupyter stack (ipykernel, papermill), matplotlib and an older transformers (4.57,
with its huggingface_hub 0.x). The split, with the wheel of this kit, is pushed to the
local test Hub (tests/hub_server.py); the notebook is copied alone into an empty
folder and run under papermill with the `colab-t4` preset shrunk to the tiny model.
Its first cell must install kit from that wheel with bitsandbytes, keep the torch it
found, and then train on 4-bit and push the adapter, with the token in no output.
"""

import json
import shutil
import uuid
from pathlib import Path

import pytest
from hub_env import FAKE_TOKEN
from venvs import Venv, clean_env

ROOT = Path(__file__).resolve().parent.parent
OLD_TRANSFORMERS = "transformers==4.57.6"
SHRINK = (
    "model.name_or_path=${KIT_CACHE}/models/tiny-smollm2; data.max_length=256; train.max_steps=4; "
    "train.save_steps=2; train.grad_accum=1; train.warmup_steps=0; train.logging_steps=1; train.session_hours=0; "
    "eval.generate_samples=2; eval.max_new_tokens=8"
)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return Venv.create(
        tmp_path_factory.mktemp("fresh-runtime") / "venv", "ipykernel", "papermill", "matplotlib", OLD_TRANSFORMERS
    )


def test_run_all_on_a_fresh_runtime_installs_kit_from_the_data_repo_and_trains_qlora(
    runtime, hub, small_split, tmp_path
):
    from kit.data.shards import push_split
    from kit.wheel import kit_version

    torch_before = runtime.version("torch")
    assert runtime.version("kit") is None and runtime.version("bitsandbytes") is None
    assert runtime.version("transformers") == OLD_TRANSFORMERS.split("==")[1]
    data, run = f"kit-tester/fresh-data-{uuid.uuid4().hex[:6]}", f"kit-tester/fresh-run-{uuid.uuid4().hex[:6]}"
    pushed = push_split(small_split, f"hf://datasets/{data}")
    assert pushed["kit"]["version"] == kit_version()

    folder = tmp_path / "content"  # Colab's /content: the notebook, and a clone named kit that is no install
    (folder / "kit").mkdir(parents=True)
    (folder / "kit" / "README.md").write_text("a clone of kit's repo: `import kit` finds this namespace folder\n")
    shutil.copy(ROOT / "notebooks" / "train_shard.ipynb", folder)
    env = clean_env(
        KIT_INSTALL_EXTRAS="gpu",
        JUPYTER_PATH=str(tmp_path / "jupyter"),
        JUPYTER_DATA_DIR=str(tmp_path / "jupyter"),
        PYTHONUNBUFFERED="1",
        TOKENIZERS_PARALLELISM="false",
    )
    parameters = [
        "-p",
        "shard_index",
        "0",
        "-p",
        "preset",
        "colab-t4",
        "-p",
        "data",
        f"hf://datasets/{data}",
        "-p",
        "output",
        f"hf://{run}",
        "-p",
        "overrides",
        SHRINK,
    ]
    proc = runtime.run(
        "-m",
        "papermill",
        "--log-output",
        "--no-progress-bar",
        *parameters,
        "train_shard.ipynb",
        "out.ipynb",
        cwd=folder,
        env=env,
        timeout=1500,
    )
    executed = (folder / "out.ipynb").read_text() if (folder / "out.ipynb").is_file() else ""
    assert proc.returncode == 0, f"papermill failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    assert f"installed kit {kit_version()} (gpu extra) from hf://datasets/{data}" in executed
    assert runtime.version("torch") == torch_before, "the runtime's torch is kept"
    assert runtime.version("bitsandbytes") is not None, "the gpu extra brought bitsandbytes"
    assert runtime.version("kit") == kit_version()
    assert "quantize: nf4, bitsandbytes" in executed and "on cpu" in executed

    files = hub.files(run)
    assert "shard-00/adapter/adapter_model.safetensors" in files
    assert json.loads(files["shard-00/metrics.json"])["kit_version"] == kit_version()
    assert json.loads(files["shard-00/adapter/kit_adapter.json"])["quantize"] == "nf4"
    assert json.loads(files["shard-00/status.json"])["state"] == "done"

    # Run all again (a reconnect): nothing to install, nothing to train.
    again = runtime.run(
        "-m",
        "papermill",
        "--no-progress-bar",
        *parameters,
        "train_shard.ipynb",
        "out-again.ipynb",
        cwd=folder,
        env=env,
        timeout=900,
    )
    rerun = (folder / "out-again.ipynb").read_text()
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"kit {kit_version()} is installed, the version hf://datasets/{data} names" in rerun
    assert f"shard 0: already done on hf://{run}" in rerun

    outputs = [executed, rerun, proc.stdout, proc.stderr, *(b.decode("utf-8", "replace") for b in files.values())]
    assert not any(FAKE_TOKEN in text for text in outputs), "the token appears in no output and no pushed file"


def test_without_a_wheel_or_network_the_install_cell_names_the_parameter_to_set(runtime, tmp_path):
    folder = tmp_path / "content"
    folder.mkdir()
    shutil.copy(ROOT / "notebooks" / "train_shard.ipynb", folder)
    # Port 9 (discard) on loopback: nothing listens, as on a runtime with no route to the Hub.
    env = clean_env(
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HUB_ETAG_TIMEOUT="2",
        HF_HUB_DOWNLOAD_TIMEOUT="2",
        JUPYTER_PATH=str(tmp_path / "jupyter"),
        JUPYTER_DATA_DIR=str(tmp_path / "jupyter"),
    )
    if runtime.version("kit") is not None:  # the test above installed it: take it out again
        runtime.pip("uninstall", "-y", "kit")
    proc = runtime.run(
        "-m",
        "papermill",
        "train_shard.ipynb",
        "out.ipynb",
        "--no-progress-bar",
        "-p",
        "data",
        "hf://datasets/nobody/unreachable",
        cwd=folder,
        env=env,
        timeout=600,
    )
    assert proc.returncode != 0
    executed = (folder / "out.ipynb").read_text()
    assert (
        "KitInstallError" in executed
        and "could not read the kit wheel from hf://datasets/nobody/unreachable" in executed
    )
    assert "set kit_source to a wheel file" in executed
