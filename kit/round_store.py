"""A run's rounds on its remote (Hub repo or folder): each round's adapters, and who makes the next global.

    store = RoundStore(remote, work_dir)
    store.push_shard(1, shard=3, adapter_dir=..., steps=5, examples=40)   # shard 3 ends round 1
    global_dir = store.wait_for_global(1, expected=[0, 1, 2, 3], timeout_s=1800, outer=Outer(0.7, 0.9))

Layout (kit/layout.py):

    rounds/000/global/                 the shared LoRA init every shard starts round 1 from
    rounds/RRR/shard-II/               a shard's adapter after round RRR, + kit_round.json (steps, examples)
    rounds/RRR/global/                 the next global: kit/rounds.py's outer step over those adapters
    rounds/RRR/outer_state.safetensors the outer optimizer's velocity after round RRR (Nesterov)
    rounds/RRR/round.json              which shards, their weights, the SVD error: the record

Whoever sees every expected shard arrive first makes the global (any account). The
expected shards are the live ones (`live_shards`: a live lease, kit/lease.py), so a
shard that died or never started is not waited for; after `timeout_s` a round closes
with the shards that arrived, and a late shard continues from that round's global. The global, its state and its
record land in one commit whose `parent_commit` is the head the maker looked at, and
only if no global is there yet: two makers racing produce one global, and the loser
uses it.

Tested by tests/test_round_store.py.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from kit.errors import RemoteError
from kit.files import json_text, read_json, write_json_atomic
from kit.layout import (
    ADAPTER_WEIGHTS,
    GLOBAL_DIR,
    OUTER_STATE,
    ROUND_RECORD,
    ROUND_SHARD_INFO,
    ShardPaths,
    round_folder,
    shard_index,
    shard_name,
)
from kit.lease import CONFLICT_TRIES
from kit.remote import Remote, is_conflict
from kit.rounds import Outer


class RoundStore:
    """One run's rounds on `remote`, with a local cache of what was pulled in `work_dir`."""

    def __init__(self, remote: Remote, work_dir: str | Path, clock: Callable[[], float] = time.monotonic, sleep=None):
        self.remote, self.work = remote, Path(work_dir)
        self.clock, self.sleep = clock, sleep or time.sleep

    # ---- what is there ----
    def global_path(self, round_: int) -> str:
        return f"{round_folder(round_)}/{GLOBAL_DIR}"

    def arrived(self, round_: int, listing: list[str] | None = None) -> list[int]:
        """The shards whose adapter for this round has landed (its info file is written last)."""
        listing = self.remote.list_files(f"{round_folder(round_)}/") if listing is None else listing
        found = set()
        for path in listing:
            parts = path.split("/")
            if len(parts) == 4 and parts[3] == ROUND_SHARD_INFO and shard_index(parts[2]) is not None:
                found.add(shard_index(parts[2]))
        return sorted(found)

    def has_global(self, round_: int, listing: list[str] | None = None) -> bool:
        listing = self.remote.list_files(f"{self.global_path(round_)}/") if listing is None else listing
        return f"{self.global_path(round_)}/{ADAPTER_WEIGHTS}" in listing

    def rounds(self, listing: list[str] | None = None) -> list[int]:
        """Every round that has a folder under rounds/, in order."""
        listing = self.remote.list_files("rounds/") if listing is None else listing
        return sorted({int(p.split("/")[1]) for p in listing if p.count("/") >= 2 and p.split("/")[1].isdigit()})

    def newest_global(self) -> int:
        """The highest round with a global adapter (0 when none: round 1 starts from the shared init)."""
        listing = self.remote.list_files("rounds/")
        return max((r for r in self.rounds(listing) if self.has_global(r, listing)), default=0)

    def open_round(self) -> int | None:
        """The newest round that has shard adapters but no global (the last round a shard could not close,
        or one whose maker's session ended), or None."""
        listing = self.remote.list_files("rounds/")
        for round_ in reversed(self.rounds(listing)):
            inside = [p for p in listing if p.startswith(f"{round_folder(round_)}/")]
            if round_ and self.arrived(round_, inside) and not self.has_global(round_, inside):
                return round_
        return None

    def live_shards(self, num_shards: int, me: int, now: float | None = None) -> list[int]:
        """The shards a round waits for: those whose lease (kit/lease.py) is live, and this one. A run with
        no lease at all (a local folder trained in place) waits for every shard of the split."""
        from kit.lease import LeaseRecord

        now = time.time() if now is None else now
        leases = {}
        for shard in range(num_shards):
            try:
                data = self.remote.read_json(str(ShardPaths.in_repo(shard).lease))
            except ValueError:
                data = None
            if data is not None:
                leases[shard] = LeaseRecord.parse(data)
        if not leases:
            return list(range(num_shards))
        return sorted({me} | {s for s, lease in leases.items() if lease is not None and lease.live(now)})

    # ---- writing ----
    def push_global(self, round_: int, adapter_dir: Path, extra: dict | None = None, parent_commit=None) -> None:
        """One commit: the global (and the outer step's record and state in `extra`); one try when conditional."""
        folder = self.global_path(round_)
        files = {f"{folder}/{p.name}": p for p in sorted(Path(adapter_dir).iterdir()) if p.is_file()}
        conditional = {"retries": False, "parent_commit": parent_commit} if parent_commit else {}
        self.remote.commit({**files, **(extra or {})}, f"{folder}: global", **conditional)

    def push_shard(
        self, round_: int, shard: int, adapter_dir: Path, steps: int, examples: int, outer: Outer | None = None
    ) -> None:
        """A shard's adapter after the round's H steps; the info file goes last (it marks the arrival). It
        carries the run's outer optimizer, so whoever closes the round (any account, the merge notebook)
        steps as the run was configured."""
        folder = f"{round_folder(round_)}/{shard_name(shard)}"
        files = {f"{folder}/{p.name}": p for p in sorted(Path(adapter_dir).iterdir()) if p.is_file()}
        info = {"round": round_, "shard": shard, "steps": steps, "examples": examples}
        if outer is not None:
            info["outer"] = asdict(outer)
        files[f"{folder}/{ROUND_SHARD_INFO}"] = json_text(info).encode()
        self.remote.commit(files, f"{folder}: round adapter")

    # ---- reading ----
    def pull(self, folder: str) -> Path:
        local = self.work / folder
        if not (local / ADAPTER_WEIGHTS).is_file():
            staging = self.work / ".pull-round"
            shutil.rmtree(staging, ignore_errors=True)
            self.remote.download([f"{folder}/"], staging)
            shutil.rmtree(local, ignore_errors=True)
            local.parent.mkdir(parents=True, exist_ok=True)
            (staging / folder).rename(local)
            shutil.rmtree(staging, ignore_errors=True)
        return local

    def pull_global(self, round_: int) -> Path:
        return self.pull(self.global_path(round_))

    # ---- the outer step ----
    def close(self, round_: int, outer: Outer | None = None) -> Path:
        """Make round `round_`'s global from the shard adapters that arrived, unless one is there; pull it.
        `outer` None: the one the shards recorded when they pushed (else plain averaging)."""
        from kit.merge import load_adapters
        from kit.rounds import load_outer_state, outer_step, save_global, save_outer_state

        for _ in range(CONFLICT_TRIES):
            head = self.remote.head()
            listing = self.remote.list_files(f"{round_folder(round_)}/")
            if self.has_global(round_, listing):
                return self.pull_global(round_)
            shards = self.arrived(round_, listing)
            if not shards:
                raise RemoteError(f"{round_folder(round_)}: no shard adapter arrived, so there is nothing to average")
            start = self.pull_global(round_ - 1)
            sources = [self.pull(f"{round_folder(round_)}/{shard_name(s)}") for s in shards]
            infos = [read_json(p / ROUND_SHARD_INFO) for p in sources]
            weights = [info["examples"] for info in infos]
            if outer is None:
                recorded = next((info["outer"] for info in infos if "outer" in info), None)
                outer = Outer(**recorded) if recorded else Outer()
            state = None
            if outer.momentum and round_ > 1:
                state_file = self.work / round_folder(round_ - 1) / OUTER_STATE
                self.remote.download([f"{round_folder(round_ - 1)}/{OUTER_STATE}"], self.work)
                state = load_outer_state(state_file)
            start_adapter, *shard_adapters = load_adapters([start, *sources])
            new, velocity, record = outer_step(
                start_adapter, shard_adapters, weights, outer.lr, outer.momentum, state, space=outer.space
            )
            made = self.work / ".made" / round_folder(round_)
            shutil.rmtree(made, ignore_errors=True)
            save_global(new, start_adapter, made / GLOBAL_DIR)
            extra = {f"{round_folder(round_)}/{ROUND_RECORD}": json_text({"round": round_, **record}).encode()}
            if velocity is not None:
                save_outer_state(velocity, made / OUTER_STATE)
                extra[f"{round_folder(round_)}/{OUTER_STATE}"] = made / OUTER_STATE
            try:
                self.push_global(round_, made / GLOBAL_DIR, extra, parent_commit=head)
            except Exception as err:
                if not is_conflict(err):
                    raise
                continue  # something landed meanwhile (a shard, or another maker's global): look again
            write_json_atomic(made / ROUND_RECORD, record)
            return self.pull_global(round_)
        raise RemoteError(f"{round_folder(round_)}: the repo kept changing under {CONFLICT_TRIES} tries")

    def wait_for_global(
        self,
        round_: int,
        expected: list[int],
        timeout_s: float,
        outer: Outer = Outer(),
        poll_s: float = 30.0,
        give_up_s: float | None = None,
    ) -> Path | None:
        """Round `round_`'s global: pulled once it is there; made here once every expected shard has arrived
        (this shard was the last), or after `timeout_s` with the shards that did (the others join later).
        None after `give_up_s` if that comes first: the session's time is up before the round's deadline, so
        the round stays open for the others and this shard waits again in its next session."""
        now = self.clock()
        deadline, give_up = now + timeout_s, None if give_up_s is None else now + give_up_s
        while True:
            listing = self.remote.list_files(f"{round_folder(round_)}/")
            if self.has_global(round_, listing):
                return self.pull_global(round_)
            arrived = self.arrived(round_, listing)
            if set(expected) <= set(arrived) or self.clock() >= deadline:
                if set(expected) - set(arrived):
                    missing = ", ".join(str(s) for s in sorted(set(expected) - set(arrived)))
                    print(f"{round_folder(round_)}: closing without shard(s) {missing} (round deadline)", flush=True)
                return self.close(round_, outer)
            if give_up is not None and self.clock() >= give_up:
                return None
            wake = min(deadline, give_up) if give_up is not None else deadline
            self.sleep(max(0.0, min(poll_s, wake - self.clock())))


def close_round(run: str | Path, round_: int | None = None, work_dir: str | Path | None = None) -> Path | None:
    """Make a run's open round's global (RoundStore.open_round, or `round_`) from the shard adapters that
    arrived, with the outer step the shards recorded: what the merge notebook (any account) does when the
    last shard of a round could not. Its local copy; None when the run has no open round."""
    import tempfile

    from kit.remote import is_hub, open_remote, open_remote_for_push

    store = RoundStore(open_remote(run), work_dir or tempfile.mkdtemp(prefix="kit-rounds-"))
    round_ = store.open_round() if round_ is None else round_
    if round_ is None:
        made = store.newest_global()
        print(f"{run}: no open round" + (f" (the newest global: {round_folder(made)}/global)" if made else ""))
        return None
    if is_hub(run):  # writing needs the token: asked for now, not before there is something to write
        store.remote = open_remote_for_push(run, "close a round of the run")
    if store.has_global(round_):
        print(f"{run}: {round_folder(round_)}/global is there already")
        return store.pull_global(round_)
    shards = ", ".join(shard_name(s) for s in store.arrived(round_))
    global_dir = store.close(round_)
    print(f"{run}: {round_folder(round_)}/global made from {shards}", flush=True)
    return global_dir
