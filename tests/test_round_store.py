"""A run's rounds on its remote (kit/round_store.py): arrivals, the last shard makes the global, deadlines, races.

.venv/bin/python -m pytest -q tests/test_round_store.py    # seconds; a folder remote and the local test Hub
"""

from __future__ import annotations

import json
import uuid

import pytest
import torch
from test_merge import make_adapter

from kit.layout import ADAPTER_WEIGHTS, OUTER_STATE, round_folder
from kit.merge import load_adapters
from kit.remote import FolderRemote, open_remote
from kit.round_store import RoundStore
from kit.rounds import Outer, load_outer_state, outer_step


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.t += seconds


def start_round(store, tiny_model_dir, tmp_path, shards=(0, 1), round_=1):
    """Round 0's global (the shared init) and the shards' adapters after round 1, pushed."""
    init = make_adapter(tiny_model_dir, tmp_path / "init", r=4, alpha=8, seed=0)
    store.push_global(0, init)
    for shard in shards:
        adapter = make_adapter(tiny_model_dir, tmp_path / f"s{shard}", r=4, alpha=8, seed=shard + 1)
        store.push_shard(round_, shard, adapter, steps=5, examples=10 * (shard + 1))
    return init


def test_the_last_shard_to_arrive_makes_the_global_weighted_by_examples(tiny_model_dir, tmp_path):
    store = RoundStore(FolderRemote(tmp_path / "run"), tmp_path / "work")
    init = start_round(store, tiny_model_dir, tmp_path)
    assert store.arrived(1) == [0, 1] and not store.has_global(1)
    made = store.wait_for_global(1, expected=[0, 1], timeout_s=60)
    assert store.has_global(1) and (made / ADAPTER_WEIGHTS).is_file()
    record = json.loads((tmp_path / "run" / round_folder(1) / "round.json").read_text())
    assert record["weights"] == [1 / 3, 2 / 3] and record["svd_error"] < 1
    start, a, b = load_adapters([init, tmp_path / "s0", tmp_path / "s1"])
    expected, _, _ = outer_step(start, [a, b], [10, 20])
    (got,) = load_adapters([made])
    for module, (ea, eb) in expected.items():
        assert torch.allclose(got.factors[module][1] @ got.factors[module][0], eb @ ea, atol=1e-5)


def test_a_round_closes_at_its_deadline_without_the_shard_that_never_came(tiny_model_dir, tmp_path, capsys):
    clock = Clock()
    store = RoundStore(FolderRemote(tmp_path / "run"), tmp_path / "work", clock=clock, sleep=clock.sleep)
    start_round(store, tiny_model_dir, tmp_path)
    store.wait_for_global(1, expected=[0, 1, 2], timeout_s=600, poll_s=30)
    assert clock.t == 600  # it waited the whole deadline, polling, then closed
    assert "closing without shard(s) 2 (round deadline)" in capsys.readouterr().out
    record = json.loads((tmp_path / "run" / round_folder(1) / "round.json").read_text())
    assert len(record["weights"]) == 2


def test_a_wait_that_outlasts_the_session_gives_up_and_leaves_the_round_open(tiny_model_dir, tmp_path):
    clock = Clock()
    store = RoundStore(FolderRemote(tmp_path / "run"), tmp_path / "work", clock=clock, sleep=clock.sleep)
    start_round(store, tiny_model_dir, tmp_path)
    got = store.wait_for_global(1, expected=[0, 1, 2], timeout_s=600, poll_s=30, give_up_s=100)
    assert got is None and clock.t == 100  # the session's time, not the round's deadline, ended the wait
    assert not store.has_global(1)  # shard 2 may still come: the round is not closed for it
    # a deadline earlier than the session's end still closes the round, as without give_up_s
    assert store.wait_for_global(1, expected=[0, 1, 2], timeout_s=60, poll_s=30, give_up_s=100) is not None
    assert store.has_global(1) and clock.t == 160


def test_a_shard_that_is_not_last_waits_and_pulls_the_global_someone_else_made(tiny_model_dir, tmp_path):
    clock = Clock()
    remote = FolderRemote(tmp_path / "run")
    maker, waiter = RoundStore(remote, tmp_path / "a"), RoundStore(remote, tmp_path / "b", clock, clock.sleep)
    start_round(maker, tiny_model_dir, tmp_path, shards=(0,))
    calls = []

    def other_shard_arrives(seconds):  # while shard 0 waits, shard 1 arrives and makes the global
        calls.append(seconds)
        adapter = make_adapter(tiny_model_dir, tmp_path / "late", r=4, alpha=8, seed=9)
        maker.push_shard(1, 1, adapter, steps=5, examples=10)
        maker.close(1)

    waiter.sleep = other_shard_arrives
    got = waiter.wait_for_global(1, expected=[0, 1], timeout_s=600, poll_s=30)
    assert (
        calls == [30]
        and (got / ADAPTER_WEIGHTS).read_bytes()
        == (tmp_path / "a" / round_folder(1) / "global" / ADAPTER_WEIGHTS).read_bytes()
    )


def saw_before(remote, folder: str) -> None:
    """From now on, `remote`'s next head() and next listing of `folder` answer what they answer now, once:
    what a maker saw just before another maker's global landed."""
    real_head, real_list = remote.head, remote.list_files
    stale = {"head": real_head(), "listing": real_list(folder)}

    def head():
        return stale.pop("head", None) or real_head()

    def list_files(prefix=""):
        return stale.pop("listing") if prefix == folder and "listing" in stale else real_list(prefix)

    remote.head, remote.list_files = head, list_files


@pytest.mark.parametrize("backend", ["hub", "folder"])
def test_two_makers_racing_produce_one_global_and_the_loser_uses_it(backend, request, tiny_model_dir, tmp_path):
    if backend == "hub":
        request.getfixturevalue("hub")
        location = f"hf://kit-tester/rounds-{uuid.uuid4().hex[:6]}"
    else:
        location = tmp_path / "run"
    first, second = RoundStore(open_remote(location), tmp_path / "a"), RoundStore(open_remote(location), tmp_path / "b")
    first.remote.ensure_exists()
    start_round(first, tiny_model_dir, tmp_path)
    saw_before(second.remote, f"{round_folder(1)}/")
    made = first.close(1)
    got = second.close(1, outer=Outer(0.7, 0.9))  # makes another global (Nesterov): its commit must be refused
    published = first.remote.read_bytes(f"{round_folder(1)}/global/{ADAPTER_WEIGHTS}")
    assert published == (made / ADAPTER_WEIGHTS).read_bytes() == (got / ADAPTER_WEIGHTS).read_bytes()
    assert first.remote.read_bytes(f"{round_folder(1)}/{OUTER_STATE}") is None, "the loser's commit left nothing"


def test_nesterov_rounds_carry_the_outer_state_from_one_round_to_the_next(tiny_model_dir, tmp_path):
    store = RoundStore(FolderRemote(tmp_path / "run"), tmp_path / "work")
    start_round(store, tiny_model_dir, tmp_path)
    store.close(1, outer=Outer(0.7, 0.9))
    assert (tmp_path / "run" / round_folder(1) / "outer_state.safetensors").is_file()
    for shard in (0, 1):
        adapter = make_adapter(tiny_model_dir, tmp_path / f"r2-{shard}", r=4, alpha=8, seed=20 + shard)
        store.push_shard(2, shard, adapter, steps=5, examples=10)
    made = store.close(2, outer=Outer(0.7, 0.9))
    # The same step by hand: round 1's global and velocity, round 2's shards.
    state = load_outer_state(tmp_path / "run" / round_folder(1) / "outer_state.safetensors")
    start, a, b = load_adapters([tmp_path / "run" / round_folder(1) / "global", tmp_path / "r2-0", tmp_path / "r2-1"])
    expected, _, _ = outer_step(start, [a, b], [10, 10], lr=0.7, momentum=0.9, state=state)
    without, _, _ = outer_step(start, [a, b], [10, 10], lr=0.7, momentum=0.9, state=None)
    (got,) = load_adapters([made])
    module = next(iter(expected))
    product = got.factors[module][1] @ got.factors[module][0]
    assert torch.allclose(product, expected[module][1] @ expected[module][0], atol=1e-5)
    assert not torch.allclose(product, without[module][1] @ without[module][0], atol=1e-5)  # the state mattered


def test_a_round_waits_for_the_shards_with_a_live_lease_and_every_shard_of_a_run_without_leases(tmp_path):
    from kit.lease import ShardLease

    remote = FolderRemote(tmp_path / "run")
    store = RoundStore(remote, tmp_path / "work")
    assert store.live_shards(4, me=0) == [0, 1, 2, 3]  # no lease anywhere: a local run, all of them
    now = 1_780_000_000.0
    for shard, age in ((1, 60), (2, 3600)):  # shard 1 beat a minute ago, shard 2 an hour ago (dead)
        ShardLease(remote, shard, 300, clock=lambda age=age: now - age, runtime="kaggle").acquire()
    assert store.live_shards(4, me=0, now=now) == [0, 1]  # shard 3 never started: not waited for


def test_close_round_finds_the_open_round_and_steps_as_the_shards_recorded(tiny_model_dir, tmp_path, capsys):
    from kit.cli import main
    from kit.round_store import close_round

    run = tmp_path / "run"
    store = RoundStore(FolderRemote(run), tmp_path / "work")
    init = make_adapter(tiny_model_dir, tmp_path / "init", r=4, alpha=8, seed=0)
    store.push_global(0, init)
    nesterov = Outer(0.7, 0.9, "factors")
    for shard in (0, 1):
        adapter = make_adapter(tiny_model_dir, tmp_path / f"s{shard}", r=4, alpha=8, seed=shard + 1)
        store.push_shard(1, shard, adapter, steps=5, examples=10, outer=nesterov)
    assert store.open_round() == 1 and store.newest_global() == 0
    assert main(["close-round", str(run)]) == 0  # what the merge notebook (any account) does
    assert f"{run}: rounds/001/global made from shard-00, shard-01" in capsys.readouterr().out
    record = json.loads((run / round_folder(1) / "round.json").read_text())
    assert (record["lr"], record["momentum"], record["space"]) == (0.7, 0.9, "factors")  # the run's, not defaults
    assert store.open_round() is None and store.newest_global() == 1
    assert (
        close_round(run) is None and "no open round (the newest global: rounds/001/global)" in capsys.readouterr().out
    )
