"""A run's rounds on its remote (Hub repo or folder): each round's adapters, and who makes the next global.

    store = RoundStore(remote, work_dir)
    store.push_shard(1, shard=3, adapter_dir=..., steps=5, examples=40)   # shard 3 ends round 1
    global_dir = store.wait_for_global(1, expected=[0, 1, 2, 3], timeout_s=1800, outer=(0.7, 0.9))

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

    def push_shard(self, round_: int, shard: int, adapter_dir: Path, steps: int, examples: int) -> None:
        """A shard's adapter after the round's H steps; the info file goes last (it marks the arrival)."""
        folder = f"{round_folder(round_)}/{shard_name(shard)}"
        files = {f"{folder}/{p.name}": p for p in sorted(Path(adapter_dir).iterdir()) if p.is_file()}
        info = {"round": round_, "shard": shard, "steps": steps, "examples": examples}
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
    def close(self, round_: int, outer: tuple[float, float] = (1.0, 0.0)) -> Path:
        """Make round `round_`'s global from the shard adapters that arrived, unless one is there; pull it."""
        from kit.merge import load_adapters
        from kit.rounds import load_outer_state, outer_step, save_global, save_outer_state

        lr, momentum = outer
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
            weights = [read_json(p / ROUND_SHARD_INFO)["examples"] for p in sources]
            state = None
            if momentum and round_ > 1:
                state_file = self.work / round_folder(round_ - 1) / OUTER_STATE
                self.remote.download([f"{round_folder(round_ - 1)}/{OUTER_STATE}"], self.work)
                state = load_outer_state(state_file)
            start_adapter, *shard_adapters = load_adapters([start, *sources])
            new, velocity, record = outer_step(start_adapter, shard_adapters, weights, lr, momentum, state)
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
        outer: tuple[float, float] = (1.0, 0.0),
        poll_s: float = 30.0,
    ) -> Path:
        """Round `round_`'s global: pulled once it is there; made here once every expected shard has arrived
        (this shard was the last), or after `timeout_s` with the shards that did (the others join later)."""
        deadline = self.clock() + timeout_s
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
            self.sleep(poll_s)
