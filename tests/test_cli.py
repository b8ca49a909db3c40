"""`python -m kit`: every command has --help; user errors are one line and exit 2.

.venv/bin/python -m pytest tests/test_cli.py -q    # seconds, no network
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kit.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", ["split", "train", "merge", "plan"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert "usage: python -m kit " + command in capsys.readouterr().out


def test_split_from_the_command_line_writes_shards_and_manifest(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": "{}"}) + "\n" for i in range(21)))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kit",
            "split",
            str(src),
            "--shards",
            "2",
            "--out",
            str(tmp_path / "s"),
            "--eval-fraction",
            "0.1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert [manifest["files"][f"shard-0{i}.jsonl"]["count"] for i in (0, 1)] == [10, 9]


def test_a_malformed_record_is_one_line_naming_file_and_line(tmp_path, capsys):
    src = tmp_path / "d.jsonl"
    src.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": 5}\n')
    assert main(["split", str(src), "--shards", "1", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {src}:2: ") and "Traceback" not in err


def test_an_unknown_override_is_named_and_nothing_trains(tmp_path, capsys, small_split):
    code = main(
        [
            "train",
            "--preset",
            "cpu-tiny",
            "--data",
            str(small_split),
            "--shard",
            "0",
            "--output",
            str(tmp_path),
            "--set",
            "train.epochs=3",
        ]
    )
    assert code == 2
    assert "unknown key 'train.epochs'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_plan_prints_the_resolved_config(capsys):
    assert main(["plan", "--preset", "cpu-tiny", "--set", "lora.r=4"]) == 0
    assert json.loads(capsys.readouterr().out)["lora"]["r"] == 4


def test_weighted_merge_without_weights_or_sample_counts_says_what_to_add(tmp_path, capsys):
    from conftest import load_script

    # An adapter with no kit_adapter.json / metrics.json: weighted has no sample count to default to.
    adapter = load_script("bench_merge").write_adapter(
        tmp_path / "a", {"model.layers.0.mlp.up_proj": (8, 4)}, r=2, alpha=4, seed=0
    )
    assert main(["merge", str(adapter), "--strategy", "weighted", "--out", str(tmp_path / "m")]) == 2
    assert "--weights" in capsys.readouterr().err
