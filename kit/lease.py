"""One writer per shard: a lease in the run's repo, renewed by a heartbeat that also pushes status.json.

    lease = ShardLease(remote, shard=3, heartbeat_s=300, local_dir=work/"shard-03")
    lease.acquire(take_over=False)      # ShardLeaseError when another live session holds the shard
    lease.commit(files, "shard-03: ...") # every write of the shard: lands only while this session holds it
    beat = Heartbeat(lease, status_source, every_s=300).start()   # status.json + lease, own small commit
    ...; beat.stop(); lease.release(files, "shard-03: final adapter")

`shard-II/lease.json` says who writes the shard: a random session id, the
runtime (colab, kaggle, ...), since when, the last renewal, the heartbeat
interval. A lease is live until STALE_BEATS heartbeats are missed; `kit
status` calls the shard stale at the same moment (kit/status.py), so the two
never disagree. A clean end (done, stopped for time, failed with an error)
marks the lease released, so the next session starts at once.

The check is a compare-and-swap on the Hub: `commit` reads the head commit,
reads the lease at that commit, and commits with `parent_commit=head`. If
anything was committed in between, the Hub refuses (412) and the check runs
again; if the lease at the head is another session's, the write is refused
with ShardLeaseError. So a session that lost its lease (it was taken over
after a long stall) can't move `latest.json` or overwrite a checkpoint. A
folder remote (a mounted Drive, a shared disk) does the same compare-and-swap
under its lock file (kit/remote.py's FolderRemote), so two sessions racing for
one shard there end with one holder too.

A restart on the same disk (a crashed kernel rerun in the same runtime) takes
its own lease back: the work dir remembers the session that last trained there.

Tested by tests/test_lease.py (`.venv/bin/python -m pytest -q tests/test_lease.py`, local test Hub).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from kit.errors import RemoteError, ShardLeaseError
from kit.files import json_text, write_text_atomic
from kit.layout import ShardPaths
from kit.remote import Remote, is_conflict, with_retries
from kit.runtime import runtime_name

STALE_BEATS = 3
"""Missed heartbeats after which a shard is stale and its lease can be taken."""
CONFLICT_TRIES = 8
"""Conditional commits retried after a 412 (another commit landed between the check and the write)."""


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def parse_time(value) -> datetime | None:
    """An ISO time as status.json and lease.json write it (UTC when it names no zone); None if it isn't one."""
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def epoch(value) -> float | None:
    parsed = parse_time(value)
    return None if parsed is None else parsed.timestamp()


@dataclass
class LeaseRecord:
    session: str
    runtime: str
    since: str  # ISO times, as status.json writes them
    renewed_at: str
    heartbeat_s: float
    released: bool = False

    @classmethod
    def parse(cls, data) -> LeaseRecord | None:
        keys = ("session", "runtime", "since", "renewed_at", "heartbeat_s")
        try:
            return cls(**{k: data[k] for k in keys}, released=bool(data.get("released", False)))
        except (KeyError, TypeError):
            return None  # unreadable: nobody can be shown to hold it

    def expires_at(self) -> float:
        return (epoch(self.renewed_at) or 0.0) + STALE_BEATS * float(self.heartbeat_s)

    def live(self, now: float) -> bool:
        return not self.released and now < self.expires_at()

    def to_bytes(self) -> bytes:
        return json_text(asdict(self)).encode()


def describe_age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


class ShardLease:
    """This session's claim on one shard of a remote run; see the module docstring."""

    def __init__(
        self,
        remote: Remote,
        shard: int,
        heartbeat_s: float,
        local_dir: Path | None = None,
        clock: Callable[[], float] = time.time,
        runtime: str | None = None,
    ):
        self.remote, self.shard, self.heartbeat_s, self.clock = remote, shard, float(heartbeat_s), clock
        self.path = str(ShardPaths.in_repo(shard).lease)
        self.local_dir = Path(local_dir) if local_dir else None
        self.session = secrets.token_hex(4)
        self.runtime = runtime or runtime_name()
        self.since: str | None = None
        self.lost: str | None = None  # why this session may no longer write, once it may not

    def _previous_session_here(self) -> str | None:
        path = self.local_dir and ShardPaths(self.local_dir.parent, self.shard).session
        return path.read_text().strip() if path and path.is_file() else None

    def read(self, revision: str | None = None) -> LeaseRecord | None:
        try:
            data = self.remote.read_json(self.path, revision)
        except ValueError:
            return None
        return LeaseRecord.parse(data) if data is not None else None

    def record(self, released: bool = False) -> LeaseRecord:
        now = iso(self.clock())
        return LeaseRecord(self.session, self.runtime, self.since or now, now, self.heartbeat_s, released)

    def held_message(self, held: LeaseRecord) -> str:
        now = self.clock()
        since = epoch(held.since) or now
        return (
            f"shard {self.shard} of {self.remote.location} is being trained by another session: {held.runtime} "
            f"(session {held.session}), holding it since {iso(since)} ({describe_age(now - since)} ago), last "
            f"heartbeat {describe_age(now - (epoch(held.renewed_at) or now))} ago. Two writers would overwrite "
            "each other's checkpoints, so this session stops before training. If that session is gone (a closed "
            "tab, a lost runtime), take the shard over: `--take-over` on the command line, take_over = True in "
            f"the notebook; or run again after {iso(held.expires_at())}, when its lease expires "
            f"({STALE_BEATS} missed heartbeats)"
        )

    def acquire(self, take_over: bool = False) -> None:
        """Hold the shard, or raise ShardLeaseError naming who does and how to take it over."""

        def claim(held: LeaseRecord | None) -> bool:
            if held is None or not held.live(self.clock()) or held.session == self.session:
                return False
            if held.session == self._previous_session_here():
                print(f"shard {self.shard}: taking back the lease of the session that trained here before", flush=True)
            elif take_over:
                print(f"shard {self.shard}: taking over from {held.runtime} (session {held.session})", flush=True)
            else:
                raise ShardLeaseError(self.held_message(held), param="take_over")
            return False

        self.since = None
        message = f"{ShardPaths.in_repo(self.shard).name}: lease to {self.runtime} ({self.session})"
        with_retries(lambda: self._conditional({}, message, check=claim), f"take {self.path} on {self.remote.location}")
        self.since = self.record().since
        if self.local_dir:
            self.local_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(ShardPaths(self.local_dir.parent, self.shard).session, self.session + "\n")

    def commit(self, files: dict, message: str, delete_folders: list[str] = (), released: bool = False) -> None:
        """Commit `files` (and renew the lease in the same commit) only while this session holds the shard."""

        def ours(held: LeaseRecord | None) -> bool:
            if held is not None and held.session == self.session and held.released and released:
                return True  # this very commit landed, its answer was lost: nothing to write again
            if held is not None and held.session == self.session and held.released:
                raise ShardLeaseError(f"shard {self.shard}: this session released its lease; it writes nothing more")
            if held is None or held.session != self.session:
                who = f"{held.runtime} (session {held.session})" if held else "nobody (the lease is gone)"
                self.lost = (
                    f"shard {self.shard}: another session took this shard over; {who} holds it now. This session "
                    f"stops writing to {self.remote.location}: nothing it pushes could be trusted. Its local files "
                    f"stay in {self.local_dir or 'the work dir'}"
                )
                raise ShardLeaseError(self.lost)
            return False

        self._conditional(files, message, delete_folders, check=ours, released=released)

    def release(self, files: dict, message: str) -> None:
        """The last commit of a clean end: `files` plus the lease marked released (the next session starts at once)."""
        self.commit(files, message, released=True)

    def _conditional(self, files, message, delete_folders=(), check=None, released: bool = False) -> None:
        for _ in range(CONFLICT_TRIES):
            head = self.remote.head()
            if check(self.read(head)):
                return
            try:
                self.remote.commit(
                    {**files, self.path: self.record(released).to_bytes()},
                    message,
                    delete_folders=list(delete_folders),
                    retries=False,
                    parent_commit=head,
                )
                return
            except Exception as err:
                if not is_conflict(err):
                    raise
                # Someone committed between the read and the write (often this session's own other
                # thread): read the lease again at the new head.
        raise RemoteError(f"{self.remote.location}: {message}: the repo kept changing under {CONFLICT_TRIES} tries")


class Heartbeat:
    """A daemon thread that pushes status.json and renews the lease every `every_s` seconds.

    `status()` returns the status to push (the local status.json plus where the shard runs);
    `extra_files()` returns more files for the same commit (tensorboard event files). A beat that
    fails on the network is retried at the next one; a lost lease ends the beats (`lease.lost`)."""

    def __init__(self, lease: ShardLease, status: Callable[[], dict], every_s: float, extra_files=None):
        self.lease, self.status, self.every_s = lease, status, float(every_s)
        self.extra_files = extra_files or (lambda: {})
        self.beats = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def stamp(self) -> dict:
        """The fields by which `kit status` judges staleness: when this beat was, and how often beats come."""
        return {"heartbeat_at": iso(self.lease.clock()), "heartbeat_s": self.every_s, "session": self.lease.session}

    def payload(self) -> dict:
        return {**self.status(), **self.stamp()}

    def beat(self) -> None:
        """One status + lease commit now (the thread calls this; tests call it with a fake clock)."""
        with self._lock:
            prefix = ShardPaths.in_repo(self.lease.shard)
            files = {str(prefix.status): json_text(self.payload()).encode(), **self.extra_files()}
            self.lease.commit(files, f"{prefix.name}: heartbeat")
            self.beats += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.beat()
            except ShardLeaseError as err:
                print(f"heartbeat stopped: {err}", flush=True)
                return
            except Exception as err:  # a network blip: the next beat may land; a missed one is not fatal
                print(f"heartbeat of shard {self.lease.shard} failed ({type(err).__name__}: {err})", flush=True)

    def start(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._loop, name=f"kit-heartbeat-{self.lease.shard}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """No beat after this returns (one in flight finishes first): the session's last commit comes after."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
