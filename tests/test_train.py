"""Training one shard on the tiny model: outputs, resume after an interruption, re-runs.

    .venv/bin/python -m pytest tests/test_train.py -q    # ~1 min on 2 cores, no network

The resume test is the invariant that matters on Colab: a run killed after a
checkpoint and started again ends with the same adapter as a run never
interrupted (max abs difference <= 1e-6 on CPU).
"""

import json

import pytest
import torch
from disconnect import Disconnect as Crash
from disconnect import DisconnectAfterStep as CrashAtStep
from safetensors.torch import load_file
from transformers import TrainerCallback

from kit.config import load_config
from kit.train import train_shard

OVERRIDES = ["train.max_steps=6", "train.save_steps=2", "eval.generate_samples=2", "eval.max_new_tokens=8"]


def adapter_weights(run, shard=0):
    return load_file(str(run / f"shard-{shard:02d}" / "adapter" / "adapter_model.safetensors"))


def max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def uninterrupted(small_split, tmp_path_factory):
    run = tmp_path_factory.mktemp("uninterrupted")
    metrics = train_shard(load_config("cpu-tiny", OVERRIDES), small_split, 0, run)
    return run, metrics


def test_a_trained_shard_writes_adapter_metrics_and_status(uninterrupted, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, metrics = uninterrupted
    shard = run / "shard-00"
    for key in ("eval_loss", "json_valid_rate", "train_tokens", "seconds"):
        assert key in metrics
    assert json.loads((shard / "metrics.json").read_text())["eval_loss"] == pytest.approx(metrics["eval_loss"])
    assert metrics["train_tokens"] > 0 and 0 <= metrics["json_valid_rate"] <= 1
    status = json.loads((shard / "status.json").read_text())
    assert status["state"] == "done" and status["step"] == status["max_steps"] == 6
    assert isinstance(status["loss"], float)
    assert sorted(p.name for p in shard.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    assert all((p / "COMPLETE").is_file() for p in shard.glob("checkpoint-*"))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), shard / "adapter")
    trained = adapter_weights(run)
    some_b = next(k for k in trained if "lora_B" in k)
    assert trained[some_b].abs().max() > 0, "training moved B away from its zero init"
    assert model.peft_config["default"].r == 8
    # SmolLM2's ChatML: the template's own generation prompt is what the answers followed in training.
    assert "add_generation_prompt=True" in metrics["prompt_recipe"]
    assert json.loads((shard / "adapter" / "kit_adapter.json").read_text())["prompt_recipe"] == metrics["prompt_recipe"]
    assert metrics["data_no_end_marker"] == 0 and metrics["data_conversations"] == metrics["train_examples"]


def test_an_interrupted_run_resumes_to_the_same_adapter(uninterrupted, small_split, tmp_path):
    run, _ = uninterrupted
    cfg = load_config("cpu-tiny", OVERRIDES)
    with pytest.raises(Crash):
        train_shard(cfg, small_split, 0, tmp_path, callbacks=[CrashAtStep(3)])
    shard = tmp_path / "shard-00"
    assert json.loads((shard / "status.json").read_text())["state"] == "failed"
    assert not (shard / "adapter").exists()
    metrics = train_shard(cfg, small_split, 0, tmp_path)
    assert metrics["resumed_from_step"] == 2
    assert max_abs_diff(adapter_weights(tmp_path), adapter_weights(run)) <= 1e-6


def test_a_checkpoint_cut_off_mid_save_is_discarded_and_the_previous_one_used(uninterrupted, small_split, tmp_path):
    run, _ = uninterrupted
    cfg = load_config("cpu-tiny", OVERRIDES)
    with pytest.raises(Crash):
        train_shard(cfg, small_split, 0, tmp_path, callbacks=[CrashAtStep(5)])
    shard = tmp_path / "shard-00"
    # What a kill during the save of checkpoint-4 leaves: a folder with part of the files and no marker.
    (shard / "checkpoint-4" / "COMPLETE").unlink()
    (shard / "checkpoint-4" / "optimizer.pt").unlink()
    metrics = train_shard(cfg, small_split, 0, tmp_path)
    assert metrics["resumed_from_step"] == 2
    assert max_abs_diff(adapter_weights(tmp_path), adapter_weights(run)) <= 1e-6


def test_running_a_finished_shard_again_trains_nothing(uninterrupted, small_split):
    run, metrics = uninterrupted
    before = (run / "shard-00" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = train_shard(load_config("cpu-tiny", OVERRIDES), small_split, 0, run)
    assert again["eval_loss"] == metrics["eval_loss"]
    assert (run / "shard-00" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == before


def test_every_shard_starts_from_the_same_lora_init(small_split, tmp_path, tiny_model_dir):
    from kit.model import add_lora, load_base_model

    cfg = load_config("cpu-tiny")
    torch.manual_seed(123)  # whatever the global RNG did before must not matter
    a = {k: v.clone() for k, v in add_lora(load_base_model(cfg), cfg).named_parameters() if "lora_A" in k}
    torch.manual_seed(456)
    b = {k: v.clone() for k, v in add_lora(load_base_model(cfg), cfg).named_parameters() if "lora_A" in k}
    assert max_abs_diff(a, b) == 0


def test_a_shard_index_out_of_range_fails_before_loading_the_model(small_split, tmp_path):
    from kit.errors import ShardError

    with pytest.raises(ShardError, match="out of range"):
        train_shard(load_config("cpu-tiny"), small_split, 5, tmp_path)
    assert not (tmp_path / "shard-05").exists()


@pytest.mark.parametrize(
    "mode", [["data.padding_free=true"], ["data.padding_free=false", "data.group_by_length=true"]], ids=str
)
def test_a_packed_or_length_grouped_run_resumes_to_the_same_adapter(mode, small_split, tmp_path):
    cfg = load_config("cpu-tiny", OVERRIDES + mode + ["train.max_tokens_per_batch=512"])
    straight = train_shard(cfg, small_split, 0, tmp_path / "straight")
    with pytest.raises(Crash):
        train_shard(cfg, small_split, 0, tmp_path / "resumed", callbacks=[CrashAtStep(3)])
    resumed = train_shard(cfg, small_split, 0, tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 2
    assert max_abs_diff(adapter_weights(tmp_path / "resumed"), adapter_weights(tmp_path / "straight")) <= 1e-6
    if "data.padding_free=true" in mode:
        # A 512-token budget holds ~4 of these ~115-token chats: the same work per step as 4 padded examples.
        assert straight["train_tokens"] > 6 * 300


# ---- bad input: one message before any step, nothing trained silently wrong ----


class NoStep(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        raise AssertionError("a step ran although the run should have been refused first")


def with_eval(small_split, tmp_path, records):
    """A copy of small_split whose eval split is `records` (its manifest updated to match)."""
    import shutil

    from kit.files import sha256_file

    split = tmp_path / "split"
    shutil.copytree(small_split, split)
    (split / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    manifest = json.loads((split / "manifest.json").read_text())
    manifest["files"]["eval.jsonl"] = {"count": len(records), "sha256": sha256_file(split / "eval.jsonl")}
    (split / "manifest.json").write_text(json.dumps(manifest))
    return split


def test_an_empty_eval_split_is_refused_before_the_first_step(small_split, tmp_path):
    from kit.errors import DataError

    split = with_eval(small_split, tmp_path, [])
    with pytest.raises(DataError, match=r"the eval split is empty.*eval_fraction above 0"):
        train_shard(load_config("cpu-tiny", OVERRIDES), split, 0, tmp_path / "run", callbacks=[NoStep()])
    assert not (tmp_path / "run" / "shard-00" / "status.json").exists(), "no status says running"


def test_an_eval_split_that_max_length_cuts_away_is_refused_before_the_first_step(small_split, tmp_path):
    from kit.errors import DataError

    long = [{"prompt": "why? " * 400, "completion": '{"a": 1}'}] * 3  # ~2000 prompt tokens > max_length 256
    split = with_eval(small_split, tmp_path, long)
    with pytest.raises(DataError, match=r"no eval example keeps an answer token within data.max_length=256") as err:
        train_shard(load_config("cpu-tiny", OVERRIDES), split, 0, tmp_path / "run", callbacks=[NoStep()])
    assert err.value.params == ("data.max_length",)


def test_an_output_that_is_a_file_is_named_before_any_work(small_split, tmp_path):
    from kit.errors import KitError

    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(KitError, match=r"is a file, not a folder"):
        train_shard(load_config("cpu-tiny", OVERRIDES), small_split, 0, tmp_path / "run" / "x")


def test_a_max_length_that_cuts_answers_short_is_counted_and_warned_about(small_split, tmp_path, capsys):
    cfg = load_config(
        "cpu-tiny", ["train.max_steps=1", "eval.generate_samples=1", "eval.max_new_tokens=4", "data.max_length=60"]
    )
    metrics = train_shard(cfg, small_split, 0, tmp_path)
    assert metrics["data_cut_truncated"] > 0.05 * metrics["train_examples"]
    assert "are cut before the end of their answer by data.max_length=60" in capsys.readouterr().out


def test_a_learning_rate_far_outside_loras_range_is_warned_about_not_refused(capsys):
    from kit.cli import main
    from kit.config import config_warnings

    assert config_warnings(load_config("cpu-tiny")) == []
    assert "train.lr=1e+12 is far outside" in config_warnings(load_config("cpu-tiny", ["train.lr=1e12"]))[0]
    assert main(["plan", "--preset", "cpu-tiny", "--set", "train.lr=1e12"]) == 0
    assert "warning: train.lr=1e+12" in capsys.readouterr().err


def tiny_model_with_template(tiny_model_dir, tmp_path, template: str):
    """A copy of the tiny model whose tokenizer has another chat template (the fixtures' templates)."""
    import shutil
    from pathlib import Path

    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    fixture = Path(__file__).parent / "fixtures" / "chat_templates" / f"{template}.jinja"
    (copy / "chat_template.jinja").write_text(fixture.read_text())
    return copy


@pytest.mark.parametrize(
    ("template", "said"),
    [
        ("no_end_marker", "train no end-of-turn marker: the chat template writes no text after those answers"),
        ("qwen3_style", "note: this template's generation prompt stops before '<think>\\n\\n</think>\\n\\n'"),
    ],
)
def test_the_run_log_says_what_the_chat_template_means_for_training_and_prompting(
    small_split, tiny_model_dir, tmp_path, capsys, template, said
):
    from kit.train import load_shard_data

    model = tiny_model_with_template(tiny_model_dir, tmp_path, template)
    cfg = load_config("cpu-tiny", [f"model.name_or_path={model}"])
    data = load_shard_data(cfg, small_split, 0)
    out = capsys.readouterr().out
    assert said in out, out
    if template == "no_end_marker":
        assert data.stats["no_end_marker"] == data.stats["kept"] > 0
    else:
        assert "enable_thinking=False" in data.prompt_recipe and "enable_thinking=False" in out


def test_data_warnings_name_each_count_that_needs_the_users_eye():
    from kit.train import data_warnings

    cfg = load_config("cpu-tiny")
    quiet = {"kept": 100, "cut_truncated": 0, "no_end_marker": 0, "reasoning_not_rendered": 0, "split_fallback": 0}
    assert data_warnings(cfg, quiet, 0) == []
    loud = {**quiet, "cut_truncated": 10, "no_end_marker": 3, "reasoning_not_rendered": 2, "split_fallback": 4}
    warnings = data_warnings(cfg, loud, 0)
    assert [w.split(" ")[0] for w in warnings] == ["10", "3", "2", "4"]
    assert "data.turns=split" in warnings[-1]
