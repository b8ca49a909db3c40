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


def test_a_shard_killed_after_its_rounds_checkpoint_but_before_its_push_pushes_it_when_it_resumes(
    small_split, tmp_path, monkeypatch
):
    from safetensors.torch import load_file

    from kit.config import load_config
    from kit.round_store import RoundStore
    from kit.train import train_shard

    cfg = load_config("cpu-tiny", [*ROUNDS, "train.round_timeout_minutes=0.05"])  # shard 1 never comes
    train_shard(cfg, small_split, 0, tmp_path / "whole")
    push = RoundStore.push_shard

    def die_before_the_push(self, *args, **kwargs):  # the session ends between the boundary's save and the push
        monkeypatch.setattr(RoundStore, "push_shard", push)
        raise Disconnect("simulated disconnect before the round adapter's push")

    monkeypatch.setattr(RoundStore, "push_shard", die_before_the_push)
    with pytest.raises(Disconnect):
        train_shard(cfg, small_split, 0, tmp_path / "cut")
    rounds = tmp_path / "cut" / "rounds" / "001"
    assert (tmp_path / "cut" / "shard-00" / "checkpoint-2" / "COMPLETE").is_file() and not (
        rounds / "shard-00"
    ).exists()

    # Resumed at the round's end: it pushes that round's adapter (the round waits for it), then trains round 2.
    resumed = train_shard(cfg, small_split, 0, tmp_path / "cut")
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 4
    info = json.loads((rounds / "shard-00" / "kit_round.json").read_text())
    assert info["round"] == 1 and info["steps"] == 2
    for name in ("rounds/001/shard-00", "rounds/001/global", "shard-00/adapter"):
        a, b = (load_file(str(tmp_path / run / name / "adapter_model.safetensors")) for run in ("whole", "cut"))
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name


def test_the_fleet_status_shows_the_round_each_shard_is_in_and_what_it_waits_for():
    from datetime import datetime, timezone

    from kit.status import fleet_totals, format_fleet, shard_row

    now = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)
    status = {"state": "running", "step": 4, "max_steps": 6, "updated_at": now.isoformat(), "round": 2,
              "waiting_for": "round 1's global adapter"}  # fmt: skip
    rows = [shard_row("hf://me/run", 0, status, None, 4, now)]
    fleet = {"dest": "hf://me/run", "now": now.isoformat(), "shards": rows, "totals": fleet_totals(rows)}
    assert "shard 0: round 2, waiting for round 1's global adapter" in format_fleet(fleet)


def test_a_session_that_ends_while_waiting_for_a_round_stops_for_time_and_the_next_one_waits_again(
    small_split, tmp_path, monkeypatch
):
    import kit.budget
    import kit.train
    from kit.budget import SessionBudget
    from kit.config import load_config
    from kit.round_store import RoundStore
    from kit.train import train_shard

    class Clock:  # fake seconds, for the budget and the round store alike
        now = 0.0

        def __call__(self):
            return self.now

        def sleep(self, seconds):
            self.now += seconds

    class Step(__import__("transformers").TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.now += 60.0

    clock = Clock()
    monkeypatch.setattr(kit.budget, "CLOCK", clock)
    monkeypatch.setattr(SessionBudget, "reserve_s", lambda self: 0.0)
    monkeypatch.setattr(kit.train, "RoundStore", lambda remote, work: RoundStore(remote, work, clock, clock.sleep))
    # 330 s: after round 1's 2 steps (120 s) the budget still trains (one step + save guess + safety = 150 s), but a
    # wait leaves ~90 s, far below the round's 60 min deadline: the wait ends with the session, the round stays open.
    cfg = load_config("cpu-tiny", [*ROUNDS, f"train.session_hours={330 / 3600!r}", "train.round_timeout_minutes=60"])
    stopped = train_shard(cfg, small_split, 0, tmp_path / "run", callbacks=[Step()])
    assert stopped["partial"] and stopped["steps"] == 2 and 60 * 60 > clock.now > 120
    status = json.loads((tmp_path / "run" / "shard-00" / "status.json").read_text())
    assert status["state"] == "stopped_for_time" and status["waiting_for"] == "round 1's global adapter"
    rounds = tmp_path / "run" / "rounds" / "001"
    assert (rounds / "shard-00").is_dir() and not (rounds / "global").exists()  # shard 1 may still come

    monkeypatch.undo()
    # The next session: no session limit here, and shard 1 never comes, so round 1 closes at its deadline.
    cfg = load_config("cpu-tiny", [*ROUNDS, "train.round_timeout_minutes=0.05"])
    done = train_shard(cfg, small_split, 0, tmp_path / "run")
    assert done["resumed_from_step"] == 2 and done["steps"] == 4
    assert (rounds / "global").is_dir()


def test_a_shard_back_after_the_fleet_moved_on_skips_to_the_newest_global(small_split, tmp_path, capsys):
    from kit.config import load_config
    from kit.rounds import checkpoint_round
    from kit.train import train_shard

    cfg = load_config("cpu-tiny", [*ROUNDS, "train.max_steps=6", "train.round_timeout_minutes=0.05"])
    # Shard 1 trains rounds 1 and 2 without shard 0 (each closes at its 3 s deadline), then its session dies.
    with pytest.raises(Disconnect, match="after step 5"):
        train_shard(cfg, small_split, 1, tmp_path / "run", callbacks=[DisconnectAfterStep(5)])
    rounds = tmp_path / "run" / "rounds"
    assert (rounds / "002" / "global").is_dir() and not (rounds / "003").exists()

    # Shard 0 starts only now: not round 1 (closed long ago, its adapter would count for nothing) but round 3.
    metrics = train_shard(cfg, small_split, 0, tmp_path / "run")
    assert "shard 0: the fleet is at round 3; skipping to it from round 1" in capsys.readouterr().out
    assert (rounds / "003" / "shard-00").is_dir()
    assert not (rounds / "001" / "shard-00").exists() and not (rounds / "002" / "shard-00").exists()
    assert metrics["steps"] == 2  # one round's steps: the fleet's last round ended its shard
    shard = tmp_path / "run" / "shard-00"
    assert checkpoint_round(shard / "checkpoint-2", 2) == 3  # its checkpoint knows it is round 3, not step 2 / H
    status = json.loads((shard / "status.json").read_text())
    assert status["state"] == "done" and status["round"] == 3

    # The fleet is over (the merge notebook made round 3's global): shard 1 back now is told so, losing nothing.
    from kit.errors import KitError
    from kit.remote import FolderRemote
    from kit.round_store import RoundStore

    RoundStore(FolderRemote(tmp_path / "run"), tmp_path / "merge-work").close(3)
    with pytest.raises(KitError, match="finished all 3 rounds while this shard was away"):
        train_shard(cfg, small_split, 1, tmp_path / "run")
    assert (tmp_path / "run" / "shard-01" / "checkpoint-4" / "COMPLETE").is_file()


@pytest.mark.parametrize("reset", [False, True], ids=["kept", "reset"])
def test_train_round_reset_optimizer_drops_the_shards_moments_at_each_rounds_start(small_split, tmp_path, reset):
    from transformers import TrainerCallback

    from kit.config import load_config
    from kit.train import train_shard

    class OptimizerAtStart(TrainerCallback):  # runs after RoundStart: what each round's first step starts from
        def __init__(self):
            self.seen = []

        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            self.seen.append((state.global_step, len(optimizer.state)))

    probe = OptimizerAtStart()
    overrides = [*ROUNDS, "train.round_timeout_minutes=0.05", f"train.round_reset_optimizer={str(reset).lower()}"]
    train_shard(load_config("cpu-tiny", overrides), small_split, 0, tmp_path / "run", callbacks=[probe])
    (first, _), (second, moments) = probe.seen
    assert (first, second) == (0, 2)
    assert (moments == 0) == reset  # round 2 resumed checkpoint-2's AdamW state; reset drops it
