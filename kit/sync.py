"""A shard's checkpoints, status and adapter on its run's remote (a Hub repo or a folder), while it trains.

    sync = open_shard_sync("hf://me/run", shard=3, work_dir=None)  # token checked here, before any training
    sync.pull_latest(run_dir)          # fresh machine: fetch the newest complete checkpoint
    Trainer(..., callbacks=[*sync.callbacks(), ...])
    sync.push_final(run_dir, metrics)  # waits for uploads, pushes adapter + card; UploadError if anything is missing

Layout on the remote, beside the local one (kit/train.py):

    shard-03/checkpoint-40/   the Trainer checkpoint, uploaded whole in one commit
    shard-03/latest.json      {"checkpoint": "checkpoint-40", "step": 40, "files": {name: sha256}}
    shard-03/status.json      step, loss, tokens/s, ETA, platform, state; pushed with every checkpoint
    shard-03/adapter/         final adapter + README.md (model card) + metrics.json
    shard-03/loss.png         the loss curve (kit/progress.py), in the same final commit
    shard-03/metrics.json     written in the same final commit; its presence means "shard done"

`latest.json` is committed only after the checkpoint's own commit has landed,
so whatever it names is complete; a resume downloads exactly that and checks
every file's sha256 against it. Older checkpoint folders are deleted in the
same commit that moves the pointer past them.

Uploads run on one background thread: training never waits for the network.
At most one push is in flight; a newer checkpoint replaces a queued older one
(only the newest is worth uploading), and a push that keeps failing while a
newer one waits is abandoned for it. Each commit is retried with backoff
(kit.remote.with_retries): the Hub client does not retry commits.

Why not `Trainer(push_to_hub=True, hub_strategy="checkpoint")`: it skips a save
while the previous push runs, has no pointer written last (a resume can find
a half-uploaded `last-checkpoint/`), does not retry a failed commit, and does
not download anything on resume.

Test hook (read only here): KIT_TEST_PAUSE_AT=step:N pauses at the end of step
N, save:N pauses inside the save of checkpoint-N before it is marked complete,
pointer:N pauses the uploader after checkpoint-N's files landed and before its
pointer is sent; each writes RUN_DIR/TEST_PAUSED and sleeps, so a test can
SIGKILL the process exactly there.

Tested by tests/test_remote.py and tests/test_hub_resume.py.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from kit.checkpoints import COMPLETE_MARKER, checkpoint_step, latest_complete_checkpoint, mark_complete
from kit.files import json_text, read_json, sha256_file
from kit.hf_token import runtime_name
from kit.model_card import shard_adapter_card
from kit.remote import (FolderRemote, Remote, RemoteError, UploadError, default_work_dir, is_hub, open_remote_for_push,
                        with_retries)

POINTER = "latest.json"
DONE_MARKER = "metrics.json"


def _snapshot(src: Path, dst: Path) -> None:
    """Hard-link (else copy) a checkpoint aside: the Trainer may delete its folder
    (save_total_limit) while the upload is still reading it."""
    shutil.rmtree(dst, ignore_errors=True)
    # rglob yields in directory order, which may list COMPLETE first (tmpfs lists newest first).
    dst.mkdir(parents=True)
    for path in src.rglob("*"):
        if path.name == COMPLETE_MARKER:
            # Written fresh, never linked: CheckpointMarker rewrites the original in place
            # (truncate, write), and a linked copy hashed in between would hash as empty.
            mark_complete(dst)
        elif path.is_file():
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)


@dataclass
class _Job:
    name: str  # checkpoint-N
    step: int
    staged: Path
    status: dict


class CheckpointUploader:
    """One background thread pushing checkpoints then their pointer; see the module docstring."""

    def __init__(self, remote: Remote, prefix: str, attempts: int = 6, base_delay: float | None = None):
        self.remote, self.prefix = remote, prefix
        self.attempts, self.base_delay = attempts, base_delay
        self.landed: list[str] = []  # checkpoint names whose pointer landed, in order
        self.errors: dict[str, str] = {}
        self.latest_submitted: str | None = None
        self._cond = threading.Condition()
        self._pending: _Job | None = None
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name=f"kit-upload-{prefix}", daemon=True)
        self._thread.start()

    def submit(self, checkpoint: Path, staged: Path, status: dict) -> None:
        job = _Job(checkpoint.name, checkpoint_step(checkpoint), staged, status)
        with self._cond:
            if self._pending is not None:  # newest wins: the queued older checkpoint is never uploaded
                shutil.rmtree(self._pending.staged, ignore_errors=True)
            self._pending = job
            self.latest_submitted = job.name
            self._cond.notify_all()

    def _superseded(self) -> bool:
        with self._cond:
            return self._pending is not None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None:
                    self._cond.wait()
                job, self._pending, self._busy = self._pending, None, True
            try:
                self._push(job)
                self.landed.append(job.name)
                self.errors.pop(job.name, None)
            except Exception as err:  # never reaches training; wait() reports it
                self.errors[job.name] = f"{type(err).__name__}: {err}"
                print(f"upload of {self.prefix}/{job.name} failed: {err}", flush=True)
            finally:
                shutil.rmtree(job.staged, ignore_errors=True)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _push(self, job: _Job) -> None:
        files = {p.relative_to(job.staged).as_posix(): p for p in sorted(job.staged.rglob("*")) if p.is_file()}
        hashes = {name: sha256_file(path) for name, path in files.items()}
        folder = f"{self.prefix}/{job.name}"
        retry = dict(attempts=self.attempts, base_delay=self.base_delay, should_stop=self._superseded)
        with_retries(lambda: self.remote.commit({f"{folder}/{n}": p for n, p in files.items()},
                                                f"{folder}: upload", retries=False), f"push {folder}", **retry)
        _maybe_pause("pointer", job.step, job.staged.parent.parent)  # test hook: files landed, pointer not sent
        pointer = {"checkpoint": job.name, "step": job.step, "files": hashes, "pushed_at": time.time()}
        older = sorted({f.split("/")[1] for f in self.remote.list_files(f"{self.prefix}/checkpoint-")} - {job.name})
        # Second commit, only after the first landed: the pointer never names a partial checkpoint.
        with_retries(lambda: self.remote.commit(
            {f"{self.prefix}/status.json": _json_bytes(job.status), f"{self.prefix}/{POINTER}": _json_bytes(pointer)},
            f"{self.prefix}: latest = {job.name}", delete_folders=[f"{self.prefix}/{o}" for o in older], retries=False,
        ), f"push {self.prefix}/{POINTER} -> {job.name}", **retry)
        print(f"pushed {folder} to {self.remote.location}", flush=True)

    def wait(self) -> None:
        """Block until nothing is queued or in flight."""
        with self._cond:
            while self._pending is not None or self._busy:
                self._cond.wait()


def _json_bytes(data) -> bytes:
    return json_text(data).encode()


def _status_for_push(run_dir: Path) -> dict:
    """The local status.json plus where this shard runs, as the remote's copy records it."""
    return {**(read_json(run_dir / "status.json", default={}) or {}), "platform": runtime_name()}


class CheckpointPusher(TrainerCallback):
    """Hands every complete checkpoint to the uploader; returns at once."""

    def __init__(self, uploader: CheckpointUploader):
        self.uploader = uploader

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        run_dir = Path(args.output_dir)
        checkpoint = run_dir / f"checkpoint-{state.global_step}"
        # Runs before CheckpointMarker (see train.py); marking here is the same idempotent write,
        # so the uploaded copy carries its COMPLETE marker.
        mark_complete(checkpoint)
        staged = run_dir / ".push" / checkpoint.name
        _snapshot(checkpoint, staged)
        self.uploader.submit(checkpoint, staged, _status_for_push(run_dir))


def _maybe_pause(kind: str, step: int, run_dir: Path) -> None:
    """Sleep forever if KIT_TEST_PAUSE_AT names this moment (tests/test_hub_resume.py kills us here)."""
    if os.environ.get("KIT_TEST_PAUSE_AT") == f"{kind}:{step}":
        (Path(run_dir) / "TEST_PAUSED").write_text(f"{kind}:{step}\n")
        while True:
            time.sleep(60)


class TestPause(TrainerCallback):
    """Calls _maybe_pause at the end of each step and inside each save (before the marker)."""

    def on_step_end(self, args, state, control, **kwargs):
        _maybe_pause("step", state.global_step, args.output_dir)

    def on_save(self, args, state, control, **kwargs):
        _maybe_pause("save", state.global_step, args.output_dir)


def _test_hooks() -> list:
    return [TestPause()] if os.environ.get("KIT_TEST_PAUSE_AT") else []


class LocalOnly:
    """DEST is a folder trained into directly: nothing to pull or push."""

    def __init__(self, output: Path):
        self.local_output = output

    def remote_metrics(self):
        return None

    def pull_latest(self, run_dir: Path):
        return None

    def callbacks(self) -> list:
        return _test_hooks()

    def push_final(self, run_dir: Path, metrics: dict) -> None:
        return None

    def wait_for_uploads(self) -> list[str]:
        return []


class ShardSync:
    """DEST is a remote: train in `local_output` (a work dir) and mirror the shard there."""

    def __init__(self, remote: Remote, local_output: Path, shard: int, dataset: str | None = None):
        self.remote, self.local_output, self.shard = remote, local_output, shard
        self.prefix = f"shard-{shard:02d}"
        self.dataset = dataset
        self._uploader: CheckpointUploader | None = None

    def remote_metrics(self) -> dict | None:
        """The shard's metrics when it is already done on the remote, else None."""
        return self.remote.read_json(f"{self.prefix}/{DONE_MARKER}")

    def pull_latest(self, run_dir: Path) -> Path | None:
        """Make the remote's latest complete checkpoint available locally (unless a newer one is here)."""
        pointer = self.remote.read_json(f"{self.prefix}/{POINTER}")
        if not pointer:
            return None
        local = latest_complete_checkpoint(run_dir)
        if local is not None and checkpoint_step(local) >= pointer["step"]:
            return local
        name = pointer["checkpoint"]
        tmp = run_dir / f".pull-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.remote.download([f"{self.prefix}/{name}/"], tmp)
        got = tmp / self.prefix / name
        for file, digest in pointer["files"].items():
            path = got / file
            if not path.is_file() or sha256_file(path) != digest:
                raise RemoteError(
                    f"{self.remote.location}/{self.prefix}/{name}/{file} does not match {POINTER} "
                    "(missing or changed after it was pushed); delete the pointer to start the shard over"
                )
        target = run_dir / name
        shutil.rmtree(target, ignore_errors=True)
        got.rename(target)
        mark_complete(target)
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"pulled {name} from {self.remote.location}/{self.prefix} (its files match {POINTER})", flush=True)
        return target

    def callbacks(self) -> list:
        self._uploader = CheckpointUploader(self.remote, self.prefix)
        return [*_test_hooks(), CheckpointPusher(self._uploader)]

    def wait_for_uploads(self) -> list[str]:
        """Block until queued checkpoint uploads are done; return what did not land. Alone (without
        push_final) after a session-budget stop: the checkpoint lands, the shard stays not done."""
        if self._uploader is None:
            return []
        self._uploader.wait()
        last = self._uploader.latest_submitted
        if last is not None and last not in self._uploader.landed:
            return [f"{self.prefix}/{last} ({self._uploader.errors.get(last, 'not pushed')})"]
        return []

    def push_final(self, run_dir: Path, metrics: dict) -> None:
        """Wait for checkpoint uploads, then push adapter + card + metrics in one commit; raise if anything is missing."""
        missing = self.wait_for_uploads()
        adapter = run_dir / "adapter"
        repo_id = self.remote.location[len("hf://"):] if is_hub(self.remote.location) else None
        dataset = self.dataset[len("hf://datasets/"):] if self.dataset and is_hub(self.dataset) else None
        (adapter / "README.md").write_text(
            shard_adapter_card(metrics, metrics.get("config", {}), repo_id, self.shard, dataset), encoding="utf-8")
        shutil.copyfile(run_dir / DONE_MARKER, adapter / DONE_MARKER)
        files = {f"{self.prefix}/adapter/{p.relative_to(adapter).as_posix()}": p
                 for p in sorted(adapter.rglob("*")) if p.is_file()}
        for extra in (run_dir / "eval_generations.jsonl", run_dir / "loss.png"):  # loss.png: kit/progress.py
            if extra.is_file():
                files[f"{self.prefix}/{extra.name}"] = extra
        files[f"{self.prefix}/status.json"] = _json_bytes(_status_for_push(run_dir))
        files[f"{self.prefix}/{DONE_MARKER}"] = run_dir / DONE_MARKER  # last: its presence means done
        try:
            self.remote.commit(files, f"{self.prefix}: final adapter")
        except RemoteError as err:
            missing.append(f"{self.prefix}/adapter and {DONE_MARKER} ({err})")
        if missing:
            raise UploadError(f"not on {self.remote.location} after every retry: " + "; ".join(missing)
                              + f". The local copy is in {run_dir}; run the same command again to push it.")
        print(f"pushed {self.prefix}/adapter (model card, metrics) to {self.remote.location}", flush=True)


def open_shard_sync(output: str | Path, shard: int, work_dir: str | Path | None = None, private: bool = True,
                    dataset: str | None = None):
    """LocalOnly for a plain folder DEST; ShardSync for hf://… (or a folder DEST with a separate work dir).

    For the Hub this checks the token and creates the repo (private unless asked)
    now, so a missing token fails before any data or model is loaded.
    """
    if is_hub(output):
        remote = open_remote_for_push(output, f"Pushing shard {shard} to {output}")
        remote.ensure_exists(private=private)
        return ShardSync(remote, Path(work_dir) if work_dir else default_work_dir(str(output)), shard, dataset)
    if work_dir is not None and Path(work_dir).resolve() != Path(output).resolve():
        return ShardSync(FolderRemote(output), Path(work_dir), shard, dataset)
    return LocalOnly(Path(output))
