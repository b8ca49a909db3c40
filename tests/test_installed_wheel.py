"""kit installed from its wheel with only its declared dependencies runs the whole CLI pipeline.

    .venv/bin/python -m pytest -q tests/test_installed_wheel.py    # ~2-3 min: builds a venv (pip's cache helps)

A scratch venv gets torch 2.13.0 and then kit's wheel, built by setuptools from this
checkout as `pip install kit` would get it: no dev extra, so no matplotlib, ipywidgets,
bitsandbytes or pytest. From an empty folder it runs split, train (tiny model, a few
steps), merge and status. What a checkout hides shows here: presets that must come from
the wheel, an optional package that must cost only its nicety.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from venvs import Venv, clean_env

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "--set",
    "train.max_steps=2",
    "--set",
    "train.save_steps=1",
    "--set",
    "eval.generate_samples=2",
    "--set",
    "eval.max_new_tokens=8",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv, wheel): kit's setuptools wheel installed into a venv holding torch and nothing else."""
    root = tmp_path_factory.mktemp("declared-deps")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(root / "dist")],
        check=True,
        capture_output=True,
        env=clean_env(),
    )
    wheel = next((root / "dist").glob("kit-*.whl"))
    venv = Venv.create(root / "venv")
    venv.pip("install", str(wheel))
    return venv, wheel


def cli(venv, *args, cwd):
    """Run `python -m kit ARGS` in the venv; return its (stdout, stdout + stderr)."""
    proc = venv.run("-m", "kit", *args, cwd=cwd, env=clean_env(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    assert proc.returncode == 0, f"kit {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout, proc.stdout + proc.stderr


def test_the_wheel_carries_every_preset(installed):
    import zipfile

    from kit.config import available_presets

    _, wheel = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"kit/configs/{p}.yaml" for p in available_presets()} <= set(names)


def test_only_the_declared_dependencies_are_installed(installed, tmp_path):
    venv, _ = installed
    for optional in ("matplotlib", "ipywidgets", "bitsandbytes", "pytest", "papermill"):
        assert venv.version(optional) is None, f"{optional} is not one of kit's dependencies"


def test_split_train_merge_and_status_run_from_the_installed_wheel(installed, tmp_path, demo_data):
    venv, _ = installed
    work = tmp_path / "empty"
    work.mkdir()
    (work / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in demo_data.generate(40, seed=3)))
    _, out = cli(venv, "split", "data.jsonl", "--shards", "2", "--out", "shards", "--eval-fraction", "0.1", cwd=work)
    assert "eval.jsonl" in out
    _, out = cli(venv, "plan", "--preset", "cpu-tiny", cwd=work)
    assert "quantize: none" in out, "presets resolve from the installed wheel"
    for shard in ("0", "1"):
        _, out = cli(
            venv,
            "train",
            "--preset",
            "cpu-tiny",
            "--data",
            "shards",
            "--shard",
            shard,
            "--output",
            "run",
            *TINY,
            cwd=work,
        )
        assert "loss.png (the loss curve) skipped: matplotlib is not installed" in out
        assert (work / "run" / f"shard-0{shard}" / "adapter" / "adapter_model.safetensors").is_file()
    metrics = json.loads((work / "run" / "shard-00" / "metrics.json").read_text())
    from kit.wheel import kit_version

    assert metrics["steps"] == 2
    assert metrics["kit_version"] == kit_version(), "the same code gets the same version, installed or checked out"
    cli(
        venv,
        "merge",
        "run/shard-00",
        "run/shard-01",
        "--strategy",
        "average",
        "--out",
        "merged",
        "--eval-data",
        "shards",
        "--preset",
        "cpu-tiny",
        "--set",
        "eval.generate_samples=2",
        "--set",
        "eval.max_new_tokens=8",
        cwd=work,
    )
    report = json.loads((work / "merged" / "merge_report.json").read_text())
    assert set(report["results"]) == {"base", "shard-00", "shard-01", "merged"}
    fleet = json.loads(cli(venv, "status", "run", "--data", "shards", "--json", cwd=work)[0])
    assert [r["state"] for r in fleet["shards"]] == ["done", "done"]
    assert {r["kit_version"] for r in fleet["shards"]} == {metrics["kit_version"]}
