"""A shard's checkpoints, status and adapter on its run's remote (a Hub repo or a folder), while it trains.

    sync = open_shard_sync("hf://me/run", shard=3, work_dir=None)  # token checked here, before any training
    sync.pull_latest(run_dir)          # fresh machine: fetch the newest complete checkpoint
    Trainer(..., callbacks=[*sync.callbacks(), ...])
    sync.push_final(run_dir, metrics)  # waits for uploads, pushes adapter + card; UploadError if anything is missing

Layout on the remote, the same as the local one (kit/layout.py):

    shard-03/checkpoint-40/   the Trainer checkpoint, uploaded whole in one commit
    shard-03/latest.json      {"checkpoint": "checkpoint-40", "step": 40, "files": {name: sha256}}
    shard-03/status.json      step, loss, tokens/s, ETA, platform, state; pushed with every checkpoint and
                              every heartbeat (kit/lease.py, train.heartbeat_minutes) in between
    shard-03/lease.json       the one session that may write the shard (kit/lease.py); every commit below
                              goes through it, so a session that lost it writes nothing
    shard-03/tensorboard/     event files (train.report_to=tensorboard), pushed with the heartbeat
    shard-03/adapter/         final adapter + README.md (model card) + metrics.json
    shard-03/loss.png         the loss curve (kit/progress.py), in the same final commit
    shard-03/metrics.json     written in the same final commit; its presence means "shard done"
    README.md                 the run's root card (kit/model_card.py's run_card), refreshed after each final push

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

The one test seam: `CheckpointUploader.files_landed(job)` runs between a
checkpoint's commit and its pointer's (a no-op here); tests/pause_runner.py
sets it to stop the process exactly there.

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

from kit.checkpoints import latest_complete_checkpoint, mark_complete
from kit.errors import RemoteError, ShardLeaseError, UploadError
from kit.files import folder_written_whole, json_text, read_json, sha256_file
from kit.layout import (
    COMPLETE_MARKER,
    MERGE_REPORT,
    METRICS,
    MODEL_CARD,
    POINTER,
    STATUS,
    ShardPaths,
    checkpoint_name,
    checkpoint_step,
)
from kit.lease import Heartbeat, ShardLease
from kit.model_card import run_card, shard_adapter_card
from kit.remote import FolderRemote, Remote, default_work_dir, is_hub, open_remote_for_push, parse_hub, with_retries
from kit.runtime import runtime_name
from kit.trackers import tensorboard_dir


def _snapshot(src: Path, dst: Path) -> None:
    """Hard-link (else copy) a checkpoint aside: the Trainer may delete its folder
    (save_total_limit) while the upload is still reading it."""
    shutil.rmtree(dst, ignore_errors=True)
    # rglob yields in directory order, which may list COMPLETE first (tmpfs lists newest first).
    dst.mkdir(parents=True)
    for path in src.rglob("*"):
        if path.name == COMPLETE_MARKER:
            # Copied, not linked, and its bytes as they are: it lists the checkpoint's files, and
            # marking the copy afresh here could run before the rest of it is linked.
            (dst / COMPLETE_MARKER).write_bytes(path.read_bytes())
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

    def __init__(self, remote: Remote, prefix: str, attempts: int = 6, base_delay: float | None = None, lease=None):
        self.remote, self.prefix, self.lease = remote, prefix, lease
        self.attempts, self.base_delay = attempts, base_delay
        self.landed: list[str] = []  # checkpoint names whose pointer landed, in order
        self.errors: dict[str, str] = {}
        self.latest_submitted: str | None = None
        self._cond = threading.Condition()
        self._pending: _Job | None = None
        self._busy = False
        self._thread = threading.Thread(target=self._loop, name=f"kit-upload-{prefix}", daemon=True)
        self._thread.start()

    def files_landed(self, job: _Job) -> None:
        """Called after a checkpoint's files landed, before its pointer is sent: nothing to do but for tests."""

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
        with_retries(
            lambda: self._commit({f"{folder}/{n}": p for n, p in files.items()}, f"{folder}: upload"),
            f"push {folder}",
            **retry,
        )
        self.files_landed(job)  # the test seam (module docstring): files landed, pointer not sent yet
        pointer = {"checkpoint": job.name, "step": job.step, "files": hashes, "pushed_at": time.time()}
        listing = self.remote.list_files(f"{self.prefix}/")
        older = sorted({f.split("/")[1] for f in listing if checkpoint_step(f.split("/")[1]) is not None} - {job.name})
        # Second commit, only after the first landed: the pointer never names a partial checkpoint.
        with_retries(
            lambda: self._commit(
                {f"{self.prefix}/{STATUS}": _json_bytes(job.status), f"{self.prefix}/{POINTER}": _json_bytes(pointer)},
                f"{self.prefix}: latest = {job.name}",
                delete_folders=[f"{self.prefix}/{o}" for o in older],
            ),
            f"push {self.prefix}/{POINTER} -> {job.name}",
            **retry,
        )
        print(f"pushed {folder} to {self.remote.location}", flush=True)

    def _commit(self, files: dict, message: str, delete_folders: list[str] = ()) -> None:
        """One attempt (the caller retries); through the lease when there is one: only its holder writes."""
        if self.lease is not None:
            self.lease.commit(files, message, delete_folders)
        else:
            self.remote.commit(files, message, delete_folders=delete_folders, retries=False)

    def wait(self) -> None:
        """Block until nothing is queued or in flight."""
        with self._cond:
            while self._pending is not None or self._busy:
                self._cond.wait()


def _json_bytes(data) -> bytes:
    return json_text(data).encode()


def _status_for_push(run_dir: Path) -> dict:
    """The local status.json plus where this shard runs, as the remote's copy records it."""
    return {**(read_json(run_dir / STATUS, default={}) or {}), "platform": runtime_name()}


class LeaseWatch(TrainerCallback):
    """Ends training at the next step once another session took the shard over (kit/lease.py):
    whatever this session trains after that can't be pushed. train_shard then raises the lease's message."""

    def __init__(self, lease):
        self.lease = lease

    def on_step_end(self, args, state, control, **kwargs):
        if self.lease.lost:
            control.should_training_stop = True
        return control


class CheckpointPusher(TrainerCallback):
    """Hands every complete checkpoint to the uploader; returns at once."""

    def __init__(self, uploader: CheckpointUploader, shard: int, status=None):
        self.uploader, self.shard = uploader, shard
        self.status = status or _status_for_push

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        run_dir = Path(args.output_dir)
        checkpoint = run_dir / checkpoint_name(state.global_step)
        # Runs before CheckpointMarker (see train.py); marking here is the same idempotent write,
        # so the uploaded copy carries its COMPLETE marker.
        mark_complete(checkpoint)
        staged = ShardPaths(run_dir.parent, self.shard).push_staging / checkpoint.name
        _snapshot(checkpoint, staged)
        self.uploader.submit(checkpoint, staged, self.status(run_dir))


class LocalOnly:
    """DEST is a folder trained into directly: nothing to pull or push."""

    def __init__(self, output: Path):
        self.local_output = output

    def remote_metrics(self):
        return None

    def pull_latest(self, run_dir: Path):
        return None

    def callbacks(self) -> list:
        return []

    def push_final(self, run_dir: Path, metrics: dict) -> None:
        return None

    def wait_for_uploads(self) -> list[str]:
        return []

    def claim(self, take_over: bool, heartbeat_s: float) -> bool:
        return False  # one folder, one machine: no lease

    def end_session(self, error: str | None = None) -> None:
        return None

    def check_lease(self) -> None:
        return None


class ShardSync:
    """DEST is a remote: train in `local_output` (a work dir) and mirror the shard there."""

    def __init__(self, remote: Remote, local_output: Path, shard: int, dataset: str | None = None):
        self.remote, self.local_output, self.shard = remote, local_output, shard
        self.paths = ShardPaths.in_repo(shard)
        self.prefix = self.paths.name
        self.dataset = dataset
        self._uploader: CheckpointUploader | None = None
        self.lease: ShardLease | None = None  # set by claim(): every write then goes through it
        self.heartbeat: Heartbeat | None = None
        self._pushed_sizes: dict[str, int] = {}
        self._ended = False  # the lease was released: this session writes nothing more

    @property
    def run_dir(self) -> Path:
        return ShardPaths(self.local_output, self.shard).dir

    def claim(self, take_over: bool, heartbeat_s: float) -> bool:
        """Take the shard's lease (ShardLeaseError if another live session holds it), then start the heartbeat."""
        self.lease = ShardLease(self.remote, self.shard, heartbeat_s, local_dir=self.run_dir)
        self.lease.acquire(take_over)
        self.heartbeat = Heartbeat(
            self.lease, lambda: _status_for_push(self.run_dir), heartbeat_s, extra_files=self.changed_logs
        ).start()
        return True

    def status_payload(self, run_dir: Path | None = None) -> dict:
        """What the remote's status.json says: the local one, where it runs, and the heartbeat that judges staleness."""
        status = _status_for_push(run_dir or self.run_dir)
        return {**status, **self.heartbeat.stamp()} if self.heartbeat is not None else status

    def changed_logs(self) -> dict:
        """Tensorboard event files (kit/trackers.py) that grew since they were last pushed."""
        folder = tensorboard_dir(self.run_dir)
        changed = {}
        for path in sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []:
            name = f"{self.prefix}/{folder.name}/{path.name}"
            if self._pushed_sizes.get(name) != path.stat().st_size:
                self._pushed_sizes[name] = path.stat().st_size
                changed[name] = path.read_bytes()  # bytes now: the writer keeps appending to the file
        return changed

    def _write(self, files: dict, message: str, release: bool = False) -> None:
        if self.lease is None:
            self.remote.commit(files, message)
        else:
            with_retries(lambda: self.lease.commit(files, message, released=release), f"push to {self.remote.location}")

    def end_session(self, error: str | None = None) -> None:
        """Stop the heartbeat and release the lease with the status as it is now (stopped for time, or
        failed with `error`), so `kit status` shows why at once and the next session can start."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.lease is None or self.lease.lost or self._ended:
            return
        self.wait_for_uploads()  # a checkpoint saved before the error still lands: released, nothing more may
        self._ended = True
        try:
            status = self.status_payload()
            if error is not None:
                status.update(state="failed", error=error[:500])
            files = {str(self.paths.status): _json_bytes(status), **self.changed_logs()}
            self._write(files, f"{self.prefix}: {status.get('state', 'session')}, lease released", release=True)
        except Exception as err:  # the session is ending anyway; the lease then expires on its own
            print(f"could not release {self.prefix}'s lease ({type(err).__name__}: {err})", flush=True)

    def check_lease(self) -> None:
        """Raise the lease's message when another session took the shard over during training."""
        if self.lease is not None and self.lease.lost:
            raise ShardLeaseError(self.lease.lost)

    def remote_metrics(self) -> dict | None:
        """The shard's metrics when it is already done on the remote, else None."""
        return self.remote.read_json(str(self.paths.metrics))

    def pull_latest(self, run_dir: Path) -> Path | None:
        """Make the remote's latest complete checkpoint available locally (unless a newer one is here)."""
        pointer = self.remote.read_json(str(self.paths.pointer))
        if not pointer:
            return None
        local = latest_complete_checkpoint(run_dir)
        if local is not None and checkpoint_step(local) >= pointer["step"]:
            return local
        name = pointer["checkpoint"]
        download = ShardPaths(run_dir.parent, self.shard).pull_staging(name)
        shutil.rmtree(download, ignore_errors=True)
        target = run_dir / name
        with folder_written_whole(target) as whole:  # a kill mid-pull leaves no checkpoint-N/ behind
            self.remote.download([f"{self.prefix}/{name}/"], download)
            got = download / self.prefix / name
            for file, digest in pointer["files"].items():
                path = got / file
                if not path.is_file() or sha256_file(path) != digest:
                    raise RemoteError(
                        f"{self.remote.location}/{self.prefix}/{name}/{file} does not match {POINTER} "
                        "(missing or changed after it was pushed); delete the pointer to start the shard over"
                    )
            whole.rmdir()
            got.rename(whole)
            mark_complete(whole)
        shutil.rmtree(download, ignore_errors=True)
        print(f"pulled {name} from {self.remote.location}/{self.prefix} (its files match {POINTER})", flush=True)
        return target

    def callbacks(self) -> list:
        self._uploader = CheckpointUploader(self.remote, self.prefix, lease=self.lease)
        watch = [LeaseWatch(self.lease)] if self.lease is not None else []
        return [*watch, CheckpointPusher(self._uploader, self.shard, self.status_payload)]

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
        """Wait for checkpoint uploads, then push adapter + card + metrics in one commit; raise if any is missing."""
        missing = self.wait_for_uploads()
        local, there = ShardPaths(run_dir.parent, self.shard), self.paths
        adapter = local.adapter
        repo_id = parse_hub(self.remote.location)[1] if is_hub(self.remote.location) else None
        dataset = parse_hub(self.dataset)[1] if self.dataset and is_hub(self.dataset) else None
        (adapter / MODEL_CARD).write_text(
            shard_adapter_card(metrics, metrics.get("config", {}), repo_id, self.shard, dataset), encoding="utf-8"
        )
        shutil.copyfile(local.metrics, adapter / METRICS)
        files = {
            f"{there.adapter}/{p.relative_to(adapter).as_posix()}": p for p in sorted(adapter.rglob("*")) if p.is_file()
        }
        for extra, remote_path in (
            (local.eval_generations, there.eval_generations),
            (local.loss_plot, there.loss_plot),
        ):
            if extra.is_file():  # the loss plot: kit/progress.py, when matplotlib is there
                files[str(remote_path)] = extra
        if self.heartbeat is not None:
            self.heartbeat.stop()  # no beat after the final status
        files.update(self.changed_logs())
        files[str(there.status)] = _json_bytes(self.status_payload(run_dir))
        files[str(there.metrics)] = local.metrics  # last: its presence means done
        try:
            self._write(files, f"{self.prefix}: final adapter", release=True)
            self._ended = True
        except ShardLeaseError:
            raise  # another session owns the shard: nothing of this one is pushed
        except RemoteError as err:
            missing.append(f"{there.adapter} and {there.metrics} ({err})")
        if missing:
            raise UploadError(
                f"not on {self.remote.location} after every retry: "
                + "; ".join(missing)
                + f". The local copy is in {run_dir}; run the same command again to push it."
            )
        print(f"pushed {there.adapter} (model card, metrics) to {self.remote.location}", flush=True)
        refresh_run_card(self.remote, self.dataset)


def refresh_run_card(remote: Remote, dataset: str | None = None) -> bool:
    """Rewrite the run repo's root README.md (kit/model_card.py's run_card) from what the repo holds now:
    every shard's row, every merge. True when written. A card that can't be made is said and skipped:
    it is a view of the run, and the run is already pushed."""
    from kit.status import read_fleet

    try:
        try:
            fleet = read_fleet(remote.location, dataset)  # the split's manifest: shards not started show too
        except Exception:
            fleet = read_fleet(remote.location)  # the split is not reachable from here (a local path elsewhere)
        if not fleet["shards"]:
            return False
        listing = remote.list_files()
        merges = {f.rsplit("/", 1)[0]: remote.read_json(f) for f in listing if f.endswith(f"/{MERGE_REPORT}")}
        done = [r["shard"] for r in fleet["shards"] if r["state"] == "done"]
        metrics = remote.read_json(str(ShardPaths.in_repo(done[0]).metrics)) if done else None
        repo_id = parse_hub(remote.location)[1] if is_hub(remote.location) else Path(remote.location).name
        hub_dataset = parse_hub(dataset)[1] if dataset and is_hub(dataset) else None
        card = run_card(fleet, merges, repo_id, (metrics or {}).get("config", {}), hub_dataset)
        remote.commit({MODEL_CARD: card.encode()}, f"run card: {len(done)} of {len(fleet['shards'])} shards done")
        return True
    except Exception as err:
        print(f"the run's root {MODEL_CARD} was not refreshed ({type(err).__name__}: {err})", flush=True)
        return False


def open_shard_sync(
    output: str | Path, shard: int, work_dir: str | Path | None = None, private: bool = True, dataset: str | None = None
):
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
