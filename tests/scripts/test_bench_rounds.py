"""scripts/bench_rounds.py runs end to end (--smoke: the tiny model, 2 shards x 4 steps, rounds of 2).

.venv/bin/python -m pytest -q tests/scripts/test_bench_rounds.py    # ~1 min on 2 cores
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_bench(*args: str) -> dict:
    """The benchmark's JSON report for --smoke with these arguments."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_rounds.py"), "--smoke", "--json", *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_the_rounds_benchmark_reports_every_row_with_its_scores_and_uploads():
    report = run_bench("--outer", "avg,nesterov,svd:2/0.5", "--optimizer", "reset,kept")
    rows = report["rows"]
    assert list(rows) == ["base", "one-shot",
                          "rounds H=2 avg reset-opt", "rounds H=2 avg",
                          "rounds H=2 nesterov reset-opt", "rounds H=2 nesterov",
                          "rounds H=2 svd:2/0.5 reset-opt", "rounds H=2 svd:2/0.5",
                          "all data", "synchronous 2x batch"]  # fmt: skip
    assert rows["rounds H=2 nesterov"]["outer"] == {"lr": 0.7, "momentum": 0.9, "space": "factors"}
    assert rows["rounds H=2 svd:2/0.5"]["outer"] == {"lr": 2.0, "momentum": 0.5, "space": "svd"}
    assert "max_factor_error" in rows["rounds H=2 avg"] and "max_svd_error" in rows["rounds H=2 svd:2/0.5"]
    for row in rows.values():
        assert {"eval_loss", "json_valid_rate", "task_accuracy", "uploaded_bytes_per_shard"} <= set(row)
    assert rows["rounds H=2 avg"]["rounds"] == 2
    # Two rounds upload two adapters per shard; the one-shot shard uploads one.
    assert rows["rounds H=2 avg"]["uploaded_bytes_per_shard"] == 2 * rows["one-shot"]["uploaded_bytes_per_shard"]
    assert rows["all data"]["eval_loss_vs_all_data"] == 0.0
    from kit.config import load_config

    assert report["lr"] == load_config("cpu-tiny").train.lr  # every row's, reported once


def test_the_rounds_benchmark_takes_its_optimizer_mode_from_the_run_settings_unless_told():
    def rows(*args):
        return list(run_bench("--rows", "rounds", "--outer", "avg", *args)["rows"])

    assert rows("--set", "train.round_reset_optimizer=true") == ["rounds H=2 avg reset-opt"]
    assert rows("--set", "train.round_reset_optimizer=true", "--optimizer", "kept") == ["rounds H=2 avg"]
