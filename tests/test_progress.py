"""One shard's progress: the live bar (loss, tokens/s, ETA, the session budget), the loss history
in status.json, and the loss curve PNG that lands beside the adapter and on the run's Hub repo.

    .venv/bin/python -m pytest -q tests/test_progress.py    # ~30 s on 2 cores, no network (local test Hub)
"""

from __future__ import annotations

import io
import json
import types
import uuid

import pytest

from kit.config import load_config
from kit.display import format_duration, frontend
from kit.progress import ProgressBar, loss_history

TINY = [
    "train.max_steps=4",
    "train.save_steps=2",
    "train.logging_steps=1",
    "eval.generate_samples=2",
    "eval.max_new_tokens=8",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_state(step, max_steps=100, tokens=0):
    return types.SimpleNamespace(
        global_step=step, max_steps=max_steps, num_input_tokens_seen=tokens, is_world_process_zero=True, log_history=[]
    )


def test_loss_history_keeps_every_point_of_a_short_run_and_thins_a_long_one_keeping_the_last():
    logs = [{"step": s, "loss": 10 / s} for s in range(1, 1001)] + [{"step": 1000, "train_loss": 1.0}]
    assert loss_history(logs[:5]) == [[s, round(10 / s, 5)] for s in range(1, 6)]
    thinned = loss_history(logs, max_points=100)
    assert len(thinned) <= 100 and thinned[0][0] == 1 and thinned[-1] == [1000, 0.01]
    assert [p[0] for p in thinned] == sorted({p[0] for p in thinned}), "steps stay in order, no repeats"


def test_durations_read_as_people_write_them():
    assert [format_duration(s) for s in (None, 7, 125, 3725)] == ["-", "7s", "2m05s", "1h02m"]


def test_the_bar_is_plain_text_outside_an_interactive_notebook_unless_forced(monkeypatch):
    monkeypatch.delenv("KIT_PROGRESS", raising=False)
    assert frontend() == "text"  # pytest is no notebook; neither is a papermill kernel
    monkeypatch.setenv("KIT_PROGRESS", "widget")
    assert frontend() == "widget"


def test_the_eta_says_where_the_session_budget_stops_training_when_that_comes_first(monkeypatch):
    clock = {"t": 1000.0}
    monkeypatch.setattr("kit.progress.time.monotonic", lambda: clock["t"])
    bar = ProgressBar(seconds_left=lambda: 120.0, plot=False, file=io.StringIO())
    bar.on_train_begin(None, fake_state(step=10, tokens=5000), None)
    clock["t"] += 100.0  # 20 steps in 100 s: 5 s a step, 70 steps (350 s) to go, but 120 s of budget
    bar.on_log(None, fake_state(step=30, tokens=25000), None, logs={"loss": 1.25})
    post = bar.postfix(fake_state(step=30, tokens=25000))
    assert post["loss"] == "1.2500" and post["tok/s"] == "200" and post["eta"] == "5m50s"
    assert post["budget"] == "stops ~step 54 in 2m00s"
    roomy = ProgressBar(seconds_left=lambda: 3600.0, plot=False, file=io.StringIO())
    roomy.on_train_begin(None, fake_state(step=10), None)
    clock["t"] += 100.0
    assert "budget" not in roomy.postfix(fake_state(step=30)), "no budget note when max_steps comes first"


def test_a_real_run_shows_a_text_bar_records_the_loss_history_and_pushes_a_loss_png(
    hub, small_split, tmp_path, capsys, monkeypatch
):
    from matplotlib.image import imread

    from kit.train import train_shard

    monkeypatch.delenv("KIT_PROGRESS", raising=False)
    repo = f"kit-tester/progress-{uuid.uuid4().hex[:8]}"
    train_shard(load_config("cpu-tiny", TINY), small_split, 0, f"hf://{repo}", work_dir=tmp_path / "work")

    err = capsys.readouterr().err
    assert "4/4" in err and "loss=" in err and "tok/s=" in err, err[-2000:]
    run_dir = tmp_path / "work" / "shard-00"
    status = json.loads((run_dir / "status.json").read_text())
    assert [step for step, _ in status["loss_history"]] == [1, 2, 3, 4]
    assert status["loss_history"][-1][1] == pytest.approx(status["loss"], abs=1e-4)

    png = (run_dir / "loss.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    pixels = imread(run_dir / "loss.png")
    assert pixels.shape[0] >= 300 and pixels.shape[1] >= 500, "a real figure, not a stub"
    assert pixels[..., :3].std() > 0.05, "something was drawn on it (axes, a line, labels)"
    assert len(png) > 5000

    files = hub.files(repo)
    assert files["shard-00/loss.png"] == png, "pushed beside the adapter, in the final commit"
    assert json.loads(files["shard-00/status.json"])["loss_history"] == status["loss_history"]
