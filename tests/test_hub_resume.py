"""Kill `python -m kit train … --output hf://…` at eleven moments, resume each time on an EMPTY work dir.

    .venv/bin/python -m pytest -q tests/test_hub_resume.py    # ~3 min on 2 cores; no network (local test Hub)

The invariant (DESIGN.md): a run killed at any point (during a step, a save, a
push) and run again, here as on a fresh Colab machine with nothing on its disk,
resumes from the Hub's latest *complete* checkpoint and ends with the same
adapter as a run never interrupted (max abs difference <= 1e-6 on CPU).

Each test is a chain: the run is SIGKILLed at one moment, the next process
starts from an empty work dir, is killed at the next moment, and so on; the
last one runs to the end. After every kill the pointer (`shard-00/latest.json`)
must name a checkpoint whose files on the Hub match its hashes, and the next
run must say it resumes from exactly that checkpoint. Moments are reached with
the server's delays (an upload held open) or a pause at an exact moment
(tests/pause_runner.py, through kit's two test seams), never with sleeps.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kit import remote as remote_mod
from kit.config import load_config
from kit.data.shards import push_split
from kit.train import train_shard

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = ["train.max_steps=8", "train.save_steps=2", "eval.generate_samples=2", "eval.max_new_tokens=8"]
HOLD = 2.0  # seconds a delayed request is held open: ample for the 20 ms poll below to kill inside it


@pytest.fixture(scope="module")
def hub_data(hub_server, small_split):
    """small_split pushed to a Hub dataset, once for the module."""
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = False  # another module may have frozen offline mode
    os.environ.pop("HF_HUB_OFFLINE", None)
    repo = f"kit-tester/resume-data-{uuid.uuid4().hex[:6]}"
    push_split(small_split, f"hf://datasets/{repo}")
    return repo


@pytest.fixture(scope="module")
def reference(small_split, tmp_path_factory):
    """The adapter of an uninterrupted run (local data, local output: the Hub must change nothing)."""
    run = tmp_path_factory.mktemp("reference")
    train_shard(load_config("cpu-tiny", OVERRIDES), small_split, 0, run)
    return load_file(str(run / "shard-00" / "adapter" / "adapter_model.safetensors"))


class Run:
    """One `python -m kit train` process on a fresh, empty work dir."""

    def __init__(self, tmp: Path, data_repo: str, run_repo: str, pause: str | None = None):
        self.work = tmp / f"work-{uuid.uuid4().hex[:6]}"
        self.shard_dir = self.work / "shard-00"
        self.log = tmp / f"{self.work.name}.log"
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env["PYTHONUNBUFFERED"] = "1"
        kit_cmd = [str(ROOT / "tests" / "pause_runner.py"), pause] if pause else ["-m", "kit"]
        cmd = [
            sys.executable,
            *kit_cmd,
            "train",
            "--preset",
            "cpu-tiny",
            "--data",
            f"hf://datasets/{data_repo}",
            "--shard",
            "0",
            "--output",
            f"hf://{run_repo}",
            "--work-dir",
            str(self.work),
            # The killed run's lease is still live: a user who restarts after a crash takes the shard over.
            "--take-over",
        ]
        for item in OVERRIDES:
            cmd += ["--set", item]
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text()

    def step(self) -> int:
        try:
            return json.loads((self.shard_dir / "status.json").read_text()).get("step", 0)
        except (FileNotFoundError, json.JSONDecodeError):
            return 0

    def paused(self) -> bool:
        return (self.shard_dir / "TEST_PAUSED").is_file()

    def wait_until(self, condition, what: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended (rc {self.proc.returncode}) before {what}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"timed out waiting for {what}:\n{self.text()[-3000:]}")
            time.sleep(0.02)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def finish(self) -> None:
        assert self.proc.wait(timeout=300) == 0, self.text()[-3000:]


def commits_to(server, repo: str, needle: bytes, applied: bool | None = None):
    """Commit requests to `repo` whose body holds `needle` (a path); applied=False: not answered yet."""
    found = [
        r
        for r in list(server.requests)
        if r.method == "POST" and r.path == f"/api/models/{repo}/commit/main" and needle in r.body
    ]
    if applied is False:
        found = [r for r in found if r.status is None]
    return found


def pointer(server, repo: str) -> dict | None:
    if not server.repo_exists(repo):
        return None
    raw = server.files(repo).get("shard-00/latest.json")
    return json.loads(raw) if raw else None


def assert_pointer_names_a_complete_checkpoint(server, repo: str) -> None:
    latest = pointer(server, repo)
    if latest is None:
        return
    files = server.files(repo)
    for name, digest in latest["files"].items():
        data = files.get(f"shard-00/{latest['checkpoint']}/{name}")
        assert data is not None and hashlib.sha256(data).hexdigest() == digest, f"{latest['checkpoint']}/{name}"
    assert "COMPLETE" in latest["files"]


# Each kill point: (name, pause, delay(repo, data) -> (paths, methods) or None, trigger(server, run, repo) -> bool)
def _delay_commits(repo, data):
    return [rf"^/api/models/{repo}/commit/"], ["POST"]


def _hold_commits_long(repo, data):
    return [rf"^/api/models/{repo}/commit/"], ["POST"], 3 * HOLD  # long enough for a whole further step


KILL_POINTS = {
    "while creating the repo": (
        None,
        lambda repo, data: ([r"^/api/repos/create$"], ["POST"]),
        lambda s, run, repo: any(
            r.path == "/api/repos/create" and repo.split("/")[1].encode() in r.body for r in list(s.requests)
        ),
    ),
    "while downloading its shard": (
        None,
        lambda repo, data: ([rf"^/datasets/{data}/resolve/"], ["GET"]),
        lambda s, run, repo: any(
            r.method == "GET" and r.path.endswith("/shard-00.jsonl") and r.status is None for r in list(s.requests)
        ),
    ),
    "during step 1": ("step:1", None, lambda s, run, repo: run.paused()),
    "during the upload of the first checkpoint, training running on": (
        None,
        _hold_commits_long,
        lambda s, run, repo: (
            commits_to(s, repo, b"shard-00/checkpoint-2/adapter_model.safetensors", applied=False) and run.step() >= 3
        ),
    ),
    "between the first checkpoint's upload and its pointer": ("pointer:2", None, lambda s, run, repo: run.paused()),
    "during step 3, checkpoint-2 on the Hub": (
        "step:3",
        None,
        lambda s, run, repo: run.paused() and (pointer(s, repo) or {}).get("step") == 2,
    ),
    "during the upload of a later checkpoint": (
        None,
        _delay_commits,
        lambda s, run, repo: commits_to(s, repo, b"shard-00/checkpoint-4/adapter_model.safetensors", applied=False),
    ),
    "while downloading the checkpoint to resume from": (
        None,
        lambda repo, data: ([rf"^/{repo}/resolve/[^/]+/shard-00/checkpoint-"], ["GET"]),
        lambda s, run, repo: any(
            r.method == "GET" and "/shard-00/checkpoint-" in r.path and repo in r.path and r.status is None
            for r in list(s.requests)
        ),
    ),
    "inside the save of checkpoint-4, before its marker": ("save:4", None, lambda s, run, repo: run.paused()),
    "during step 8, checkpoint-6 on the Hub": (
        "step:8",
        None,
        lambda s, run, repo: run.paused() and (pointer(s, repo) or {}).get("step") == 6,
    ),
    "during the final adapter push": (
        None,
        _delay_commits,
        lambda s, run, repo: commits_to(s, repo, b"shard-00/adapter/adapter_model.safetensors", applied=False),
    ),
}

CHAINS = {
    "before-any-pointer": [
        "while creating the repo",
        "while downloading its shard",
        "during step 1",
        "during the upload of the first checkpoint, training running on",
        "between the first checkpoint's upload and its pointer",
    ],
    "after-pointers": [
        "during step 3, checkpoint-2 on the Hub",
        "during the upload of a later checkpoint",
        "while downloading the checkpoint to resume from",
        "inside the save of checkpoint-4, before its marker",
        "during step 8, checkpoint-6 on the Hub",
        "during the final adapter push",
    ],
}


def test_the_chains_cover_every_kill_point_once():
    assert sorted(sum(CHAINS.values(), [])) == sorted(KILL_POINTS) and len(KILL_POINTS) >= 10


def resumed_from(log: str) -> str | None:
    for line in log.splitlines():
        if line.startswith("shard 0:") and "examples" in line:
            return line.rsplit("resuming from ", 1)[1].strip() if "resuming from " in line else "start"
    return None


@pytest.mark.parametrize("chain", list(CHAINS))
def test_a_run_killed_anywhere_resumes_from_the_hub_to_the_same_adapter(
    chain, hub_server, hub_data, reference, tmp_path, monkeypatch
):
    monkeypatch.setattr(remote_mod, "RETRY_BASE_DELAY_S", 0.05)
    repo = f"kit-tester/resume-{chain}-{uuid.uuid4().hex[:6]}"
    expected = "start"  # what the next run must resume from
    for name in CHAINS[chain]:
        pause, delay, trigger = KILL_POINTS[name]
        hold = HOLD
        if delay:
            paths, methods, *custom = delay(repo, hub_data)
            hold = custom[0] if custom else HOLD
            hub_server.set_delay(hold, paths=paths, methods=methods)
        run = Run(tmp_path, hub_data, repo, pause)
        try:
            run.wait_until(lambda trigger=trigger, run=run: trigger(hub_server, run, repo), name)
        finally:
            run.kill()
            hub_server.set_delay(0.0)
        if delay:
            # The server applies a request it has fully received even after its client died
            # (as the Hub would): let the held one finish before reading what the Hub holds.
            time.sleep(hold + 0.5)
        said = resumed_from(run.text())
        assert said in (None, expected), f"{name}: resumed from {said}, the Hub's latest was {expected}"
        assert_pointer_names_a_complete_checkpoint(hub_server, repo)
        latest = pointer(hub_server, repo)
        expected = latest["checkpoint"] if latest else "start"
        if "shard-00/metrics.json" in hub_server.files(repo):
            expected = "done"  # the killed final push had been fully sent: the shard is done
        if name == "between the first checkpoint's upload and its pointer":
            assert any(p.startswith("shard-00/checkpoint-2/") for p in hub_server.files(repo)) and latest is None

    final = Run(tmp_path, hub_data, repo)
    final.finish()
    if expected == "done":
        assert "already done on" in final.text()
    else:
        assert resumed_from(final.text()) == expected
    assert expected != "start" or chain == "before-any-pointer"
    files = hub_server.files(repo)
    assert json.loads(files["shard-00/latest.json"])["checkpoint"] == "checkpoint-8"
    assert sorted({p.split("/")[1] for p in files if p.startswith("shard-00/checkpoint-")}) == ["checkpoint-8"]
    assert json.loads(files["shard-00/status.json"])["state"] == "done"
    pushed = tmp_path / "pushed.safetensors"
    pushed.write_bytes(files["shard-00/adapter/adapter_model.safetensors"])
    adapter = load_file(str(pushed))
    assert adapter.keys() == reference.keys()
    assert max((adapter[k] - reference[k]).abs().max().item() for k in adapter) <= 1e-6
