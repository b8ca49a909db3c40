"""The session budget: a deterministic fake clock drives SessionBudget, alone and inside a real run.

    .venv/bin/python -m pytest -q tests/test_budget.py    # ~40 s on 2 cores, no network

The run test is the Colab/Kaggle promise: a shard stopped by its time limit
leaves a complete checkpoint (pushed to the run's remote, the shard not marked
done), and the next session resumes to the same adapter as a run never
stopped (max abs difference <= 1e-6 on CPU).
"""

import json
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerControl

import kit.budget
from kit.budget import FinalReserve, SessionBudget
from kit.config import load_config
from kit.train import train_shard

OVERRIDES = ["train.max_steps=6", "train.save_steps=2", "eval.generate_samples=2", "eval.max_new_tokens=8"]
STEP_S = 60.0


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def drive(budget, clock, max_steps, save_steps=100, step_s=STEP_S):
    """Run the callback the way the Trainer does; return the step it stopped at (or max_steps)."""
    args = SimpleNamespace(device="cpu")
    state = SimpleNamespace(global_step=0, max_steps=max_steps, save_steps=save_steps, is_world_process_zero=True)
    budget.on_train_begin(args, state, TrainerControl())
    while state.global_step < max_steps:
        clock.now += step_s
        state.global_step += 1
        control = budget.on_step_end(args, state, TrainerControl())
        if control.should_save or state.global_step % save_steps == 0:
            budget.on_save(args, state, control)
        if control.should_training_stop:
            assert control.should_save, "a budget stop always saves first"
            return state.global_step
    return state.global_step


def test_the_budget_stops_when_one_more_step_and_a_save_no_longer_fit():
    clock = FakeClock()
    budget = SessionBudget(1000, clock=clock, warmup_steps=2, safety_s=100, save_guess_s=50, verbose=False)
    # Stop after step k once 1000 - 60 k < 60 (step) + 50 (save) + 100 (safety): k = 14 leaves 160 s.
    assert drive(budget, clock, max_steps=100) == 14
    assert budget.stopped and budget.report()["stopped_for_time"]
    assert 1000 - clock.now >= 50 + 100, "the stop's own save still fits before the deadline, with the safety"


def test_after_warm_up_the_plan_says_how_many_steps_fit_and_whether_the_shard_is_on_track(capsys):
    clock = FakeClock()
    budget = SessionBudget(1000, clock=clock, warmup_steps=2, safety_s=100, save_guess_s=50)
    drive(budget, clock, max_steps=100)
    plan = budget.estimate
    assert plan["at_step"] == 3 and plan["step_s"] == STEP_S and plan["steps_left"] == 97
    assert plan["steps_fit"] == 10 and plan["on_track"] is False  # (1000 - 180 - 210) // 60
    assert "NOT on track" in capsys.readouterr().out


def test_a_shard_that_fits_is_on_track_and_never_stopped():
    clock = FakeClock()
    budget = SessionBudget(10_000, clock=clock, warmup_steps=2, safety_s=100, save_guess_s=50, verbose=False)
    assert drive(budget, clock, max_steps=20) == 20
    assert budget.estimate["on_track"] and not budget.stopped


def test_the_final_eval_and_push_are_kept_free_at_the_end_of_the_session(capsys):
    clock = FakeClock()
    # One eval batch of 10 new tokens at 1 s each (x1.25 safety): 12.5 s; the push as long as a save (50 s).
    reserve = FinalReserve(eval_tokens=0, generate_batches=1, max_new_tokens=10, probe=lambda model: 1.0)
    budget = SessionBudget(1000, clock=clock, warmup_steps=2, safety_s=100, save_guess_s=50, reserve=reserve)
    budget.on_train_begin(None, SimpleNamespace(num_input_tokens_seen=0), TrainerControl(), model=object())
    assert reserve.token_step_s == 1.0  # measured once, as training begins
    # Stop after step k once 1000 - 60 k < 60 + 50 + 100 + (12.5 + 50) = 272.5: k = 13 (14 without the reserve).
    assert drive(budget, clock, max_steps=100) == 13
    assert "+ the final eval and push (~62 s) + safety" in capsys.readouterr().out
    reported = budget.report()["final_reserve"]  # after the stop's own save (0 s on this clock): the push is that
    assert reported == {"eval_loss_s": 0.0, "generate_s": 12.5, "push_s": 0.0, "total_s": 12.5}


def test_the_eval_loss_reserve_follows_the_measured_training_speed():
    reserve = FinalReserve(eval_tokens=3000, generate_batches=0, max_new_tokens=0)
    # 1000 training tokens/s; a forward costs FORWARD_SHARE of a step per token; x RESERVE_SAFETY.
    expected = 3000 / 1000 * kit.budget.FORWARD_SHARE * kit.budget.RESERVE_SAFETY
    assert reserve.parts(1000.0, push_s=5.0) == {"eval_loss_s": round(expected, 1), "generate_s": 0.0, "push_s": 5.0}
    assert reserve.seconds(None, push_s=5.0) == 5.0  # before any step is measured: the push alone


def test_time_already_used_by_setup_counts_against_the_session():
    clock = FakeClock()
    budget = SessionBudget(
        1000, elapsed_s=300, clock=clock, warmup_steps=2, safety_s=100, save_guess_s=50, verbose=False
    )
    assert drive(budget, clock, max_steps=100) == 9  # 700 - 60 k < 210


def test_warm_up_steps_are_left_out_of_the_step_time():
    clock = FakeClock()
    budget = SessionBudget(10_000, clock=clock, warmup_steps=1, verbose=False)
    state = SimpleNamespace(global_step=0, max_steps=10, save_steps=100, is_world_process_zero=True)
    budget.on_train_begin(None, state, TrainerControl())
    for step_s in (500.0, 10.0, 10.0):  # the first step pays for allocation and compilation
        clock.now += step_s
        state.global_step += 1
        budget.on_step_end(None, state, TrainerControl())
    assert budget.step_s() == 10.0


class AdvanceClock(TrainerCallback):
    """Every training step takes STEP_S seconds of fake time."""

    def __init__(self, clock):
        self.clock = clock

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.now += STEP_S


def weights(root):
    return load_file(str(root / "shard-00" / "adapter" / "adapter_model.safetensors"))


def test_a_run_stopped_for_time_saves_pushes_and_resumes_to_the_same_adapter(small_split, tmp_path, monkeypatch):
    uninterrupted = train_shard(load_config("cpu-tiny", OVERRIDES), small_split, 0, tmp_path / "whole")

    clock = FakeClock()
    monkeypatch.setattr(kit.budget, "CLOCK", clock)
    # This session's arithmetic leaves the final eval's reserve out (the tests above cover it); the next one has it.
    monkeypatch.setattr(SessionBudget, "reserve_s", lambda self: 0.0)
    # 285 s: steps 1-2 leave >= 150 s (step + 30 s save guess + 60 s safety); after step 3, 105 s < 120 s.
    # Real setup time (a few seconds) also counts; the window for stopping at step 3 is 15 s wide.
    cfg = load_config("cpu-tiny", [*OVERRIDES, f"train.session_hours={285 / 3600!r}"])
    remote, work = tmp_path / "remote", tmp_path / "work"
    stopped = train_shard(cfg, small_split, 0, remote, callbacks=[AdvanceClock(clock)], work_dir=work)
    shard = work / "shard-00"
    assert stopped["partial"] and stopped["steps"] == 3
    assert (shard / "checkpoint-3" / "COMPLETE").is_file(), "the stop saved a complete checkpoint"
    status = json.loads((shard / "status.json").read_text())
    assert status["state"] == "stopped_for_time" and status["step"] == 3
    assert status["budget"]["plan"] is None or "eta_s" in status["budget"]["plan"]
    assert not (shard / "adapter").exists() and not (shard / "metrics.json").exists()
    partial = json.loads((shard / "metrics.partial.json").read_text())
    assert partial["budget"]["stopped_for_time"] and partial["budget"]["train_s"] == pytest.approx(3 * STEP_S)
    # On the remote: the stop's checkpoint landed and is "latest"; the shard is not done there either.
    assert json.loads((remote / "shard-00" / "latest.json").read_text())["checkpoint"] == "checkpoint-3"
    assert json.loads((remote / "shard-00" / "status.json").read_text())["state"] == "stopped_for_time"
    assert not (remote / "shard-00" / "metrics.json").exists()

    monkeypatch.setattr(kit.budget, "CLOCK", __import__("time").monotonic)
    monkeypatch.undo()  # the real clock and the real reserve: its generation probe runs on the real model
    # The next session, on a fresh machine (new work dir): pulls checkpoint-3 and finishes.
    resumed = train_shard(cfg, small_split, 0, remote, work_dir=tmp_path / "fresh")
    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == 6
    assert resumed["budget"]["stopped_for_time"] is False
    reserve = resumed["budget"]["final_reserve"]
    assert reserve["generate_s"] > 0 and reserve["eval_loss_s"] > 0 and resumed["final_eval_s"] >= 0
    a, b = weights(tmp_path / "fresh"), weights(tmp_path / "whole")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert uninterrupted["budget"] is None
