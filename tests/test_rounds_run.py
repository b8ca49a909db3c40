"""`kit train` with train.round_steps: shards that meet every round through the run's folder (kit/round_store.py).

    .venv/bin/python -m pytest -q tests/test_rounds_run.py    # ~1 min on 2 cores, no network

Two `python -m kit train` processes train shards 0 and 1 side by side, 2 rounds of 2 steps;
then one shard alone, whose partner never comes: its rounds close at their deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from disconnect import Disconnect, DisconnectAfterStep

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = ["train.max_steps=4", "train.save_steps=2", "train.round_steps=2", "eval.generate_samples=1"]
ROUNDS += ["eval.max_new_tokens=4"]


def start(split, out, shard, extra=()):
    cmd = [sys.executable, "-m", "kit", "train", "--preset", "cpu-tiny", "--data", str(split), "--shard", str(shard)]
    cmd += ["--output", str(out)]
    for item in [*ROUNDS, *extra]:
        cmd += ["--set", item]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_shards_train_in_rounds_and_meet_at_each_one(small_split, tmp_path):
    procs = [start(small_split, tmp_path / "run", shard, ["train.round_timeout_minutes=5"]) for shard in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    rounds = tmp_path / "run" / "rounds"
    assert sorted(p.name for p in rounds.iterdir()) == ["000", "001", "002"]
    for round_ in ("001", "002"):
        assert {p.name for p in (rounds / round_).iterdir()} >= {"global", "shard-00", "shard-01", "round.json"}
        record = json.loads((rounds / round_ / "round.json").read_text())
        assert len(record["weights"]) == 2 and record["lr"] == 1.0 and record["momentum"] == 0.0
    for shard in (0, 1):
        status = json.loads((tmp_path / "run" / f"shard-0{shard}" / "status.json").read_text())
        assert status["state"] == "done" and status["round"] == 2 and status["waiting_for"] is None


def test_a_round_closes_at_its_deadline_when_a_shard_never_comes(small_split, tmp_path):
    alone = start(small_split, tmp_path / "run", 0, ["train.round_timeout_minutes=0.05"])
    log = alone.communicate(timeout=600)[0]
    assert alone.returncode == 0, log[-3000:]
    assert "rounds/001: closing without shard(s) 1 (round deadline)" in log
    record = json.loads((tmp_path / "run" / "rounds" / "001" / "round.json").read_text())
    assert record["shards"] == ["shard-00"] and record["weights"] == [1.0]


def test_a_shard_killed_mid_round_resumes_its_round_exactly(small_split, tmp_path):
    from safetensors.torch import load_file

    from kit.config import load_config
    from kit.train import train_shard

    # Shard 0 alone (its partner's rounds close at a 3 s deadline); a checkpoint every step.
    cfg = load_config("cpu-tiny", [*ROUNDS, "train.max_steps=6", "train.save_steps=1", "train.round_steps=3",
                                   "train.round_timeout_minutes=0.05"])  # fmt: skip
    train_shard(cfg, small_split, 0, tmp_path / "whole")
    with pytest.raises(Disconnect, match="after step 5"):
        train_shard(cfg, small_split, 0, tmp_path / "cut", callbacks=[DisconnectAfterStep(5)])  # in round 2
    resumed = train_shard(cfg, small_split, 0, tmp_path / "cut")
    assert resumed["resumed_from_step"] == 4  # mid-round: its own checkpoint, not round 1's global
    a, b = (
        load_file(str(tmp_path / run / "shard-00" / "adapter" / "adapter_model.safetensors"))
        for run in ("whole", "cut")
    )
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6


def test_the_fleet_status_shows_the_round_each_shard_is_in_and_what_it_waits_for():
    from datetime import datetime, timezone

    from kit.status import fleet_totals, format_fleet, shard_row

    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    status = {"state": "running", "step": 4, "max_steps": 6, "updated_at": now.isoformat(), "round": 2,
              "waiting_for": "round 1's global adapter"}  # fmt: skip
    rows = [shard_row("hf://me/run", 0, status, None, 4, now)]
    fleet = {"dest": "hf://me/run", "now": now.isoformat(), "shards": rows, "totals": fleet_totals(rows)}
    assert "shard 0: round 2, waiting for round 1's global adapter" in format_fleet(fleet)
