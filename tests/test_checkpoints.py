"""Checkpoints are verified before they are trusted, and a resume knows what it resumes.

    .venv/bin/python -m pytest -q tests/test_checkpoints.py    # ~2 min on 2 cores, no network (a local test Hub)

Each case is what an unlucky user meets: a checkpoint file cut short by a full disk,
an optimizer.pt deleted, a resume onto other data or other LoRA settings, a shard
finished with other settings. The invariant stays: a resume ends with the same
adapter as a run never interrupted (max abs difference <= 1e-6 on CPU).
"""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
from safetensors.torch import load_file
from test_train import OVERRIDES, Crash, CrashAtStep, max_abs_diff

from kit.checkpoints import damage, mark_complete, newest_intact_checkpoint
from kit.config import load_config
from kit.errors import IdentityMismatch
from kit.train import train_shard


def weights(run):
    return load_file(str(run / "shard-00" / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(small_split, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    train_shard(load_config("cpu-tiny", OVERRIDES), small_split, 0, run)
    return weights(run)


def crashed_at(step, split, run, overrides=OVERRIDES, **kwargs):
    with pytest.raises(Crash):
        train_shard(load_config("cpu-tiny", overrides), split, 0, run, callbacks=[CrashAtStep(step)], **kwargs)


def cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_marker_lists_every_file_and_finds_one_cut_short_missing_or_changed(tmp_path):
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    (ckpt / "adapter_model.safetensors").write_bytes(b"w" * 100)
    (ckpt / "optimizer.pt").write_bytes(b"o" * 50)
    mark_complete(ckpt)
    assert set(json.loads((ckpt / "COMPLETE").read_text())["files"]) == {"adapter_model.safetensors", "optimizer.pt"}
    assert damage(ckpt) is None
    cut_in_half(ckpt / "adapter_model.safetensors")
    assert damage(ckpt) == "adapter_model.safetensors has 50 bytes, not the 100 it was saved with"
    (ckpt / "adapter_model.safetensors").write_bytes(b"x" * 100)
    assert "changed after it was saved" in damage(ckpt)
    (ckpt / "optimizer.pt").unlink()
    (ckpt / "adapter_model.safetensors").write_bytes(b"w" * 100)
    assert damage(ckpt) == "optimizer.pt is missing"
    (ckpt / "COMPLETE").write_text("complete\n")  # an older kit's marker: trusted as before
    assert damage(ckpt) is None


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(uninterrupted, small_split, tmp_path, capsys):
    crashed_at(5, small_split, tmp_path)
    shard = tmp_path / "shard-00"
    cut_in_half(shard / "checkpoint-4" / "adapter_model.safetensors")
    metrics = train_shard(load_config("cpu-tiny", OVERRIDES), small_split, 0, tmp_path)
    out = capsys.readouterr().out
    assert "checkpoint-4 is damaged (adapter_model.safetensors has" in out and "resuming from checkpoint-2" in out
    assert metrics["resumed_from_step"] == 2
    assert max_abs_diff(weights(tmp_path), uninterrupted) <= 1e-6
    assert any(p.name.startswith(".damaged-checkpoint-4-") for p in shard.iterdir()), "set aside, not deleted"


def test_a_deleted_optimizer_state_is_never_resumed_with_a_fresh_optimizer(uninterrupted, small_split, tmp_path):
    crashed_at(5, small_split, tmp_path)
    (tmp_path / "shard-00" / "checkpoint-4" / "optimizer.pt").unlink()
    metrics = train_shard(load_config("cpu-tiny", OVERRIDES), small_split, 0, tmp_path)
    assert metrics["resumed_from_step"] == 2 and max_abs_diff(weights(tmp_path), uninterrupted) <= 1e-6


def test_with_every_checkpoint_damaged_the_shard_starts_over_and_says_why(uninterrupted, small_split, tmp_path, capsys):
    crashed_at(3, small_split, tmp_path)  # only checkpoint-2
    cut_in_half(tmp_path / "shard-00" / "checkpoint-2" / "adapter_model.safetensors")
    metrics = train_shard(load_config("cpu-tiny", OVERRIDES), small_split, 0, tmp_path)
    assert "no intact checkpoint is left: starting over" in capsys.readouterr().out
    assert metrics["resumed_from_step"] is None and max_abs_diff(weights(tmp_path), uninterrupted) <= 1e-6


def test_newest_intact_checkpoint_skips_damaged_ones_newest_first(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "w").write_bytes(b"w" * 10)
        mark_complete(tmp_path / f"checkpoint-{step}")
    for step in (4, 6):
        cut_in_half(tmp_path / f"checkpoint-{step}" / "w")
    found, notes = newest_intact_checkpoint(tmp_path)
    assert found.name == "checkpoint-2" and [n.split(" ")[0] for n in notes] == ["checkpoint-6", "checkpoint-4"]


def test_a_resume_with_other_lora_settings_stops_and_lists_what_differs(small_split, tmp_path):
    crashed_at(3, small_split, tmp_path)
    before = sorted(p.name for p in (tmp_path / "shard-00").iterdir())
    with pytest.raises(IdentityMismatch, match=r"lora.r: 8 -> 4.*give a new output") as err:
        train_shard(load_config("cpu-tiny", OVERRIDES + ["lora.r=4"]), small_split, 0, tmp_path)
    assert "lora.alpha" not in str(err.value), "only what differs is listed"
    assert sorted(p.name for p in (tmp_path / "shard-00").iterdir()) == before, "nothing saved is touched"


def test_a_resume_onto_another_split_stops_instead_of_mixing_two_datasets(small_split, tmp_path, demo_data):
    from kit.data.shards import split_dataset

    crashed_at(3, small_split, tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in demo_data.generate(60, seed=9)))
    split_dataset(other, tmp_path / "other-split", 2, eval_fraction=0.1)
    with pytest.raises(IdentityMismatch, match=r"data_sha256: '[0-9a-f]{64}' -> '[0-9a-f]{64}'"):
        train_shard(load_config("cpu-tiny", OVERRIDES), tmp_path / "other-split", 0, tmp_path)


def test_a_finished_shard_run_again_with_other_settings_says_so(small_split, tmp_path, capsys):
    fast = ["train.max_steps=2", "train.save_steps=2", "eval.generate_samples=1", "eval.max_new_tokens=4"]
    train_shard(load_config("cpu-tiny", fast), small_split, 0, tmp_path)
    capsys.readouterr()
    again = train_shard(load_config("cpu-tiny", [*fast, "train.lr=5e-4"]), small_split, 0, tmp_path)
    out = capsys.readouterr().out
    assert "already done" in out and "with other settings than these: train.lr: 0.001 -> 0.0005" in out
    assert again["steps"] == 2, "it is not trained again"


# ---- the same with a Hub destination (the local test Hub) ----


def unique(name):
    return f"kit-tester/{name}-{uuid.uuid4().hex[:8]}"


def test_a_damaged_local_checkpoint_is_replaced_by_the_hubs_intact_copy(hub, uninterrupted, small_split, tmp_path):
    from kit.data.shards import push_split

    data, run = unique("data"), unique("damaged")
    push_split(small_split, f"hf://datasets/{data}")
    work = tmp_path / "work"
    crashed_at(5, f"hf://datasets/{data}", f"hf://{run}", work_dir=work)
    cut_in_half(work / "shard-00" / "checkpoint-4" / "adapter_model.safetensors")
    metrics = train_shard(load_config("cpu-tiny", OVERRIDES), f"hf://datasets/{data}", 0, f"hf://{run}", work_dir=work)
    assert metrics["resumed_from_step"] == 4, "the Hub's checkpoint-4 is intact: pulled, not given up"
    assert max_abs_diff(weights(work), uninterrupted) <= 1e-6


def test_a_resume_from_the_hub_with_other_settings_stops(hub, small_split, tmp_path):
    from kit.data.shards import push_split

    data, run = unique("data"), unique("identity")
    push_split(small_split, f"hf://datasets/{data}")
    crashed_at(3, f"hf://datasets/{data}", f"hf://{run}", work_dir=tmp_path / "first")
    with pytest.raises(IdentityMismatch, match=r"lora.r: 8 -> 4"):
        train_shard(
            load_config("cpu-tiny", OVERRIDES + ["lora.r=4"]),
            f"hf://datasets/{data}",
            0,
            f"hf://{run}",
            work_dir=tmp_path / "fresh-machine",
        )
    shutil.rmtree(tmp_path / "fresh-machine")


@pytest.mark.parametrize(("last_turn_only", "resumes"), [(False, True), (True, False)])
def test_a_checkpoint_stamped_before_data_turns_existed_is_read_with_the_new_name(tmp_path, last_turn_only, resumes):
    from kit.identity import check_resume, run_identity

    identity = run_identity(load_config("cpu-tiny"), shard=0, data_sha256="0" * 64)
    old = json.loads(json.dumps(identity))
    del old["config"]["data"]["turns"]
    old["config"]["data"]["last_turn_only"] = last_turn_only
    (tmp_path / "kit_identity.json").write_text(json.dumps(old))
    if resumes:
        check_resume(tmp_path, identity)
    else:
        with pytest.raises(IdentityMismatch, match=r"data.turns: 'last' -> 'all'"):
            check_resume(tmp_path, identity)


def test_a_one_shot_checkpoint_resumed_with_rounds_stops_instead_of_mixing_two_schedules(small_split, tmp_path):
    crashed_at(3, small_split, tmp_path)
    with pytest.raises(IdentityMismatch, match=r"train.round_steps: 0 -> 2"):
        train_shard(load_config("cpu-tiny", OVERRIDES + ["train.round_steps=2"]), small_split, 0, tmp_path)


def test_a_stamp_from_before_the_round_settings_were_recorded_resumes_and_still_compares_the_rest(tmp_path):
    from kit.identity import check_resume, run_identity

    identity = run_identity(load_config("cpu-tiny", ["train.round_steps=2"]), shard=0, data_sha256="0" * 64)
    old = json.loads(json.dumps(identity))
    for key in ("round_steps", "round_reset_optimizer", "outer_lr", "outer_momentum", "outer_space"):
        del old["config"]["train"][key]
    (tmp_path / "kit_identity.json").write_text(json.dumps(old))
    check_resume(tmp_path, identity)
    old["config"]["train"]["lr"] = 0.5
    (tmp_path / "kit_identity.json").write_text(json.dumps(old))
    with pytest.raises(IdentityMismatch, match=r"train.lr: 0.5 -> 0.001"):
        check_resume(tmp_path, identity)
