"""train.report_to: the Trainer's own tracker callbacks, named so a shard keeps one run across a resume.

    .venv/bin/python -m pytest -q tests/test_trackers.py    # ~40 s on 2 cores, no network, no Space

TensorBoard runs for real (offline event files); trackio runs for real too, into a
local TRACKIO_DIR with no Space, and W&B in its offline mode (its run files read back
by tests/wandb_records.py): what is checked is the project and run name each was
started with, that a resume continues that run, and that no token reaches any.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from disconnect import Disconnect as Crash
from disconnect import DisconnectAfterStep as CrashAfterStep
from hub_env import FAKE_TOKEN

from kit.config import load_config, report_targets
from kit.errors import ConfigError
from kit.trackers import tracker_arguments, tracker_names
from kit.train import train_shard

OVERRIDES = ["train.max_steps=4", "train.save_steps=2", "eval.generate_samples=1", "eval.max_new_tokens=4"]
ROOT = Path(__file__).resolve().parent.parent


def scalar_steps(logdir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted(logdir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            steps += [e.step for e in acc.Scalars(tag)]
    return steps


def test_report_to_takes_one_tracker_a_list_or_none_and_refuses_an_unknown_one():
    assert report_targets("none") == [] and report_targets("") == []
    assert report_targets("trackio, tensorboard") == ["trackio", "tensorboard"]
    assert load_config("cpu-tiny", ["train.report_to=[wandb, trackio]"]).train.report_to == "wandb,trackio"
    with pytest.raises(ConfigError, match=r"train.report_to='tensorbord': unknown tracker tensorbord"):
        load_config("cpu-tiny", ["train.report_to=tensorbord"])


def test_every_shard_of_a_run_reports_to_one_project_under_a_name_fixed_per_shard():
    names = tracker_names("hf://me/run", 3)
    assert (names.project, names.run_name) == ("me/run", "me/run/shard-03")
    assert tracker_names("hf://me/run", 3) == names and tracker_names("hf://me/run", 4).run_id != names.run_id
    cfg = load_config("cpu-tiny", ["train.report_to=trackio,wandb,tensorboard", "train.trackio_space_id=me/dash"])
    args = tracker_arguments(cfg, names)
    assert args["report_to"] == ["trackio", "wandb"]  # tensorboard is kit's own callback (tracker_callbacks)
    assert (args["project"], args["run_name"], args["trackio_space_id"]) == ("me/run", "me/run/shard-03", "me/dash")
    assert args["trackio_static_space_id"] is False


def test_a_missing_tracker_package_is_named_before_any_work(small_split, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"train.report_to=wandb needs wandb: `pip install wandb`"):
        train_shard(load_config("cpu-tiny", [*OVERRIDES, "train.report_to=wandb"]), small_split, 0, tmp_path)
    assert not (tmp_path / "shard-00").exists()


def test_tensorboard_event_files_continue_in_one_folder_across_a_resume(small_split, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    cfg = load_config("cpu-tiny", [*OVERRIDES, "train.report_to=tensorboard"])
    with pytest.raises(Crash):
        train_shard(cfg, small_split, 0, tmp_path, callbacks=[CrashAfterStep(3)])
    logdir = tmp_path / "shard-00" / "tensorboard"
    assert scalar_steps(logdir, "train/loss") == [1, 2]  # step 3 ended before its log line
    metrics = train_shard(cfg, small_split, 0, tmp_path)
    assert metrics["resumed_from_step"] == 2
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2  # one per session, side by side
    assert scalar_steps(logdir, "train/loss") == [1, 2, 3, 4]
    assert not list((tmp_path / "shard-00").glob("runs"))  # not transformers' per-start folder
    for events in logdir.iterdir():
        assert FAKE_TOKEN.encode() not in events.read_bytes()


TRACKIO_RUN = """
import json, sys
from kit.config import load_config
from kit.train import train_shard
import kit.train, transformers.integrations.integration_utils as iu

seen = []
real_init = iu.TrackioCallback.setup
def setup(self, args, state, model, **kw):
    seen.append({"project": args.project, "name": args.run_name, "space": args.trackio_space_id})
    return real_init(self, args, state, model, **kw)
iu.TrackioCallback.setup = setup
from transformers import TrainerCallback
class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == int(sys.argv[4]):
            raise SystemExit(3)  # a disconnect after this step
overrides = json.loads(sys.argv[3])
try:
    train_shard(load_config("cpu-tiny", overrides), sys.argv[1], 0, sys.argv[2], callbacks=[Crash()])
finally:
    print("SEEN " + json.dumps(seen))
"""


def run_trackio(split, out, overrides, env, crash_after: int = 0) -> tuple[int, list, str]:
    proc = subprocess.run(
        [sys.executable, "-c", TRACKIO_RUN, str(split), str(out), json.dumps(overrides), str(crash_after)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    seen = [json.loads(line[5:]) for line in proc.stdout.splitlines() if line.startswith("SEEN ")]
    return proc.returncode, seen[0] if seen else [], proc.stdout + proc.stderr


def test_trackio_logs_the_shard_under_the_runs_project_and_a_resume_continues_the_same_run(small_split, tmp_path):
    pytest.importorskip("trackio")
    import sqlite3

    out = tmp_path / "my-run"
    env = {
        **os.environ,
        "TRACKIO_DIR": str(tmp_path / "trackio"),
        "HF_TOKEN": FAKE_TOKEN,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
    }
    overrides = [*OVERRIDES, "train.report_to=trackio"]
    rc, seen, log = run_trackio(small_split, out, overrides, env, crash_after=3)
    assert rc == 3, log[-3000:]
    assert seen == [{"project": "my-run", "name": "my-run/shard-00", "space": None}]
    rc, seen, log = run_trackio(small_split, out, overrides, env)  # the resume
    assert rc == 0, log[-3000:]
    assert "resuming from checkpoint-2" in log and seen[0]["name"] == "my-run/shard-00"
    dbs = list((tmp_path / "trackio").glob("*.db"))
    assert len(dbs) == 1 and dbs[0].stem == "my-run", dbs
    assert FAKE_TOKEN.encode() not in dbs[0].read_bytes()
    with sqlite3.connect(dbs[0]) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(metrics)")]
        rows = [dict(zip(columns, r)) for r in db.execute("SELECT * FROM metrics")]
    assert {r["run_name"] for r in rows} == {"my-run/shard-00"}
    assert len({r["run_id"] for r in rows}) == 1  # the resumed session continued the run, it did not start one
    steps = [json.loads(r["metrics"])["train/global_step"] for r in rows if "train/loss" in json.loads(r["metrics"])]
    assert steps == [1, 2, 3, 4]


WANDB_RUN = """
import json, sys
from kit.config import load_config
from kit.train import train_shard
from transformers import TrainerCallback
class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == int(sys.argv[4]):
            raise SystemExit(3)  # a disconnect after this step
for shard in json.loads(sys.argv[5]):  # several shards: one process, as a script looping over kit.train_shard
    train_shard(load_config("cpu-tiny", json.loads(sys.argv[3])), sys.argv[1], shard, sys.argv[2], callbacks=[Crash()])
"""


def run_wandb(split, out, env, shards=(0,), crash_after: int = 0) -> subprocess.CompletedProcess:
    overrides = [*OVERRIDES, "train.report_to=wandb"]
    argv = [str(split), str(out), json.dumps(overrides), str(crash_after), json.dumps(list(shards))]
    return subprocess.run(
        [sys.executable, "-c", WANDB_RUN, *argv], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )


def wandb_env(tmp_path: Path, **extra: str) -> dict:
    """Real W&B in offline mode, writing its run files under tmp_path: nothing is sent."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_DIR=str(tmp_path), WANDB_SILENT="true", HF_HUB_OFFLINE="1")
    return env | {"PYTHONPATH": str(ROOT), **extra}


def wandb_sessions(wandb_dir: Path) -> list[dict]:
    """Each offline run folder W&B wrote, oldest first: its run, steps logged and exit code."""
    from wandb_records import logged_steps, read_wandb_records

    sessions = []
    for folder in sorted((wandb_dir / "wandb").glob("offline-run-*")):
        (path,) = folder.glob("*.wandb")
        records = read_wandb_records(path)
        kinds = {r.WhichOneof("record_type"): r for r in records}
        run = kinds["run"].run
        sessions.append(
            {
                "id": run.run_id,
                "name": run.display_name,
                "project": run.project,
                "steps": logged_steps(records, "train/loss"),
                "exit": kinds["exit"].exit.exit_code,
            }
        )
    return sessions


def test_wandb_logs_the_shard_under_its_fixed_run_and_a_resume_continues_it(small_split, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "my-run"
    env = wandb_env(tmp_path, HF_TOKEN=FAKE_TOKEN)
    proc = run_wandb(small_split, out, env, crash_after=3)
    assert proc.returncode == 3, proc.stderr[-3000:]
    proc = run_wandb(small_split, out, env)  # the resume, as on another account
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint-2" in proc.stdout + proc.stderr
    run_id = tracker_names(out, 0).run_id
    assert wandb_sessions(tmp_path) == [
        {"id": run_id, "name": "my-run/shard-00", "project": "my-run", "steps": [1, 2], "exit": 1},
        {"id": run_id, "name": "my-run/shard-00", "project": "my-run", "steps": [3, 4], "exit": 0},
    ]  # step 3 ended before its log line; the crashed session is marked failed; `wandb sync --id` joins them
    for path in (tmp_path / "wandb").rglob("*"):
        assert not path.is_file() or FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_each_shard_trained_in_one_process_gets_its_own_wandb_run(small_split, tmp_path):
    pytest.importorskip("wandb")
    out = tmp_path / "my-run"
    env = wandb_env(tmp_path)
    proc = run_wandb(small_split, out, env, shards=(0, 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    sessions = wandb_sessions(tmp_path)
    # Left to WandbCallback, shard 1 logged into shard 0's run: it never finishes its run, and wandb reads
    # WANDB_RUN_ID once per process.
    assert [(s["id"], s["name"], s["steps"]) for s in sessions] == [
        (tracker_names(out, 0).run_id, "my-run/shard-00", [1, 2, 3, 4]),
        (tracker_names(out, 1).run_id, "my-run/shard-01", [1, 2, 3, 4]),
    ]
