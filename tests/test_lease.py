"""One writer per shard (kit/lease.py) and a heartbeat that keeps `kit status` honest, on the local test Hub.

    .venv/bin/python -m pytest -q tests/test_lease.py    # ~1 min on 2 cores, no network

The clock of a lease and of `read_fleet` is injected, so "25 minutes between two
saves" and "killed an hour ago" take no time. The last test is the real thing:
two `python -m kit train` processes on one shard.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kit.errors import ShardLeaseError
from kit.lease import STALE_BEATS, Heartbeat, ShardLease
from kit.remote import FolderRemote, open_remote
from kit.status import read_fleet

ROOT = Path(__file__).resolve().parent.parent
BEAT_S = 300.0


class Clock:
    def __init__(self, t: float = 1_780_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.t, timezone.utc)


def hub_run(hub) -> str:
    repo = f"kit-tester/lease-{uuid.uuid4().hex[:8]}"
    open_remote(f"hf://{repo}").ensure_exists()
    return repo


def lease_for(repo, clock, runtime, local_dir=None) -> ShardLease:
    return ShardLease(open_remote(f"hf://{repo}"), 0, BEAT_S, local_dir=local_dir, clock=clock, runtime=runtime)


def test_a_second_session_on_a_live_shard_is_refused_with_who_holds_it_and_how_to_take_over(hub):
    repo, clock = hub_run(hub), Clock()
    first = lease_for(repo, clock, "kaggle")
    first.acquire()
    clock.t += 120
    second = lease_for(repo, clock, "colab")
    with pytest.raises(ShardLeaseError) as refused:
        second.acquire()
    message = str(refused.value)
    assert f"session {first.session}" in message and "kaggle" in message
    assert "since 2026-05-28T20:26:40+00:00 (2 min ago)" in message
    assert "`--take-over`" in message and "take_over = True" in message
    assert "after 2026-05-28T20:41:40+00:00" in message  # 3 missed beats of 5 min after its last renewal
    assert json.loads(hub.files(repo)["shard-00/lease.json"])["session"] == first.session


def test_a_lease_older_than_three_beats_or_released_is_taken_without_asking(hub):
    repo, clock = hub_run(hub), Clock()
    lease_for(repo, clock, "kaggle").acquire()
    clock.t += STALE_BEATS * BEAT_S - 1
    with pytest.raises(ShardLeaseError):
        lease_for(repo, clock, "colab").acquire()
    clock.t += 2
    late = lease_for(repo, clock, "colab")
    late.acquire()  # expired: no take-over needed
    late.release({}, "shard-00: done")
    lease_for(repo, clock, "lab").acquire()  # released a moment ago: free at once


def test_a_writer_that_lost_its_lease_fails_instead_of_overwriting(hub):
    repo, clock = hub_run(hub), Clock()
    old = lease_for(repo, clock, "kaggle")
    old.acquire()
    old.commit({"shard-00/latest.json": b'{"step": 2}'}, "shard-00: latest = checkpoint-2")
    new = lease_for(repo, clock, "colab")
    new.acquire(take_over=True)
    new.commit({"shard-00/latest.json": b'{"step": 4}'}, "shard-00: latest = checkpoint-4")
    with pytest.raises(ShardLeaseError, match="another session took this shard over; colab"):
        old.commit({"shard-00/latest.json": b'{"step": 3}'}, "shard-00: latest = checkpoint-3")
    assert old.lost and json.loads(hub.files(repo)["shard-00/latest.json"]) == {"step": 4}
    with pytest.raises(ShardLeaseError):  # a heartbeat of the old session can't renew it either
        Heartbeat(old, lambda: {"state": "running"}, BEAT_S).beat()
    assert json.loads(hub.files(repo)["shard-00/lease.json"])["session"] == new.session


def test_a_commit_that_lands_between_the_check_and_the_write_makes_the_check_run_again(hub):
    repo, clock = hub_run(hub), Clock()
    lease = lease_for(repo, clock, "kaggle")
    lease.acquire()
    remote, real_head, interfered = lease.remote, lease.remote.head, []

    def head():  # another commit lands right after this session read the head, once
        sha = real_head()
        if not interfered:
            interfered.append(sha)
            open_remote(f"hf://{repo}").commit({"notes.txt": b"x"}, "someone else")
        return sha

    remote.head = head
    lease.commit({"shard-00/latest.json": b"{}"}, "shard-00: latest = checkpoint-2")
    summaries = [c["summary"] for c in hub.commits(repo)]
    assert summaries[-2:] == ["someone else", "shard-00: latest = checkpoint-2"]  # refused once (412), then landed
    assert any(r.status == 412 for r in hub.requests)


def test_a_restart_on_the_same_disk_takes_its_own_lease_back(hub, tmp_path):
    repo, clock = hub_run(hub), Clock()
    lease_for(repo, clock, "colab", local_dir=tmp_path / "shard-00").acquire()
    again = lease_for(repo, clock, "colab", local_dir=tmp_path / "shard-00")  # the kernel died; Run all again
    again.acquire()
    with pytest.raises(ShardLeaseError):
        lease_for(repo, clock, "kaggle", local_dir=tmp_path / "elsewhere" / "shard-00").acquire()


def test_a_folder_remote_checks_the_lease_before_each_write(tmp_path):
    clock = Clock()
    first = ShardLease(FolderRemote(tmp_path / "run"), 0, BEAT_S, clock=clock, runtime="drive-a")
    first.acquire()
    with pytest.raises(ShardLeaseError):
        ShardLease(FolderRemote(tmp_path / "run"), 0, BEAT_S, clock=clock, runtime="drive-b").acquire()


class SlowReads(FolderRemote):
    """A shared disk that takes a while to read: every session reads "no lease" before any writes one."""

    def read_bytes(self, path, revision=None):
        data = super().read_bytes(path, revision)
        time.sleep(0.2)
        return data


def test_sessions_racing_for_one_shard_on_a_folder_end_with_one_holder(tmp_path):
    clock, start = Clock(), threading.Barrier(4)
    leases = [ShardLease(SlowReads(tmp_path / "run"), 0, BEAT_S, clock=clock, runtime=f"box-{i}") for i in range(4)]
    held, refused = [], []

    def race(lease):
        start.wait()
        try:
            lease.acquire()
            held.append(lease.session)
        except ShardLeaseError:
            refused.append(lease.session)

    threads = [threading.Thread(target=race, args=(lease,)) for lease in leases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(held) == 1 and len(refused) == 3
    assert json.loads((tmp_path / "run" / "shard-00" / "lease.json").read_text())["session"] == held[0]


def test_a_slow_shard_between_saves_is_never_stale_and_a_killed_one_is_after_three_missed_beats(hub):
    repo, clock = hub_run(hub), Clock()
    lease = lease_for(repo, clock, "kaggle")
    lease.acquire()
    started = clock.t
    status = {"state": "running", "step": 3, "max_steps": 100, "updated_at": clock.datetime().isoformat()}
    beat = Heartbeat(lease, lambda: dict(status), BEAT_S)
    beat.beat()
    # 40 minutes without a log line or a save (a P100 shard with long steps): only heartbeats.
    while clock.t < started + 40 * 60:
        clock.t += 60
        if clock.t - started >= BEAT_S * beat.beats:
            beat.beat()
        row = read_fleet(f"hf://{repo}", now=clock.datetime())["shards"][0]
        assert row["state"] == "running", (clock.t - started, row)
    last = clock.t - (clock.t - started) % BEAT_S
    clock.t = last + STALE_BEATS * BEAT_S - 1  # killed after its last beat: not yet three missed
    assert read_fleet(f"hf://{repo}", now=clock.datetime())["shards"][0]["state"] == "running"
    clock.t = last + STALE_BEATS * BEAT_S + 1
    row = read_fleet(f"hf://{repo}", now=clock.datetime())["shards"][0]
    assert row["state"] == "stale" and "open train_shard with shard_index=0" in row["action"]
    assert lease_for(repo, clock, "colab").acquire() is None  # and its lease is free at the same moment


# A 3 s heartbeat: the lease of a killed session expires 9 s after its last beat.
TRAIN_OVERRIDES = ["train.max_steps=6", "train.save_steps=2", "train.heartbeat_minutes=0.05"]
TRAIN_OVERRIDES += ["eval.generate_samples=1", "eval.max_new_tokens=4"]


def start_train(repo_data, repo_run, work, log, pause=None, take_over=False):
    cmd = [sys.executable, *([str(ROOT / "tests" / "pause_runner.py"), pause] if pause else ["-m", "kit"])]
    cmd += ["train", "--preset", "cpu-tiny", "--data", f"hf://datasets/{repo_data}", "--shard", "0"]
    cmd += ["--output", f"hf://{repo_run}", "--work-dir", str(work), *(["--take-over"] if take_over else [])]
    for item in TRAIN_OVERRIDES:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def test_two_processes_on_one_shard_one_trains_the_other_refuses_then_takes_over_after_a_kill(
    hub, small_split, tmp_path
):
    from kit.data.shards import push_split

    data, run = f"kit-tester/lease-data-{uuid.uuid4().hex[:6]}", f"kit-tester/lease-run-{uuid.uuid4().hex[:6]}"
    push_split(small_split, f"hf://datasets/{data}")
    first = start_train(data, run, tmp_path / "a", tmp_path / "a.log", pause="step:3")
    deadline = time.monotonic() + 120
    while not (tmp_path / "a" / "shard-00" / "TEST_PAUSED").is_file():  # step 3 done, checkpoint-2 pushed
        assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "a.log").read_text()[-3000:]
        time.sleep(0.1)
    while "shard-00/latest.json" not in hub.files(run):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(4)  # more than a heartbeat (3 s): the paused session's heartbeat keeps its lease live
    second_log = tmp_path / "b.log"
    second = start_train(data, run, tmp_path / "b", second_log)
    assert second.wait(timeout=120) != 0
    text = second_log.read_text()
    assert "is being trained by another session" in text and "--take-over" in text, text[-3000:]
    assert "Traceback" not in text and not (tmp_path / "b" / "shard-00" / "checkpoint-2").exists()

    first.send_signal(signal.SIGKILL)
    first.wait()
    lease = json.loads(hub.files(run)["shard-00/lease.json"])
    expires = datetime.fromisoformat(lease["renewed_at"]).timestamp() + STALE_BEATS * lease["heartbeat_s"]
    time.sleep(max(expires - time.time(), 0) + 1.5)  # the lease expires: no take-over needed
    third = start_train(data, run, tmp_path / "b", second_log)
    assert third.wait(timeout=300) == 0, second_log.read_text()[-3000:]
    text = second_log.read_text()
    assert "resuming from checkpoint-2" in text, text[-3000:]
    files = hub.files(run)
    assert "shard-00/metrics.json" in files
    final_lease = json.loads(files["shard-00/lease.json"])
    assert final_lease["released"] and final_lease["session"] != lease["session"]
    heartbeats = [c for c in hub.commits(run) if c["summary"] == "shard-00: heartbeat"]
    assert heartbeats, [c["summary"] for c in hub.commits(run)]
