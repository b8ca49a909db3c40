"""QLoRA for real on CPU: bitsandbytes runs NF4 layers and 8-bit optimizers here, so nothing is mocked.

    .venv/bin/python -m pytest -q tests/test_qlora.py    # ~2 min on 2 cores, no network

The runs are the `colab-t4` preset (nf4, paged_adamw_8bit, gradient checkpointing, length
grouping) shrunk to the tiny model; rank 64 makes every LoRA matrix at least 4096 values,
bitsandbytes' threshold for 8-bit optimizer state, so the resume test covers that state.
"""

import json
import math

import pytest
import torch
from test_train import Crash, CrashAtStep, adapter_weights, max_abs_diff

from kit.config import load_config
from kit.platform import resolve_platform
from kit.train import train_shard

bnb = pytest.importorskip("bitsandbytes", reason="the dev extra installs bitsandbytes; the 4-bit path needs it")

TINY_COLAB = [
    "model.name_or_path=${KIT_CACHE}/models/tiny-smollm2",
    "data.max_length=256",
    "lora.r=64",
    "lora.alpha=128",
    "train.max_steps=6",
    "train.save_steps=2",
    "train.grad_accum=1",
    "train.warmup_steps=0",
    "train.logging_steps=1",
    "train.lr=1e-3",
    "train.session_hours=0",
    "eval.generate_samples=2",
    "eval.max_new_tokens=8",
    "eval.batch_size=4",
]


def colab_t4_tiny():
    return load_config("colab-t4", TINY_COLAB)


@pytest.fixture(scope="module")
def straight(small_split, tmp_path_factory):
    """Both shards trained without interruption, on the 4-bit base."""
    run = tmp_path_factory.mktemp("qlora-straight")
    return run, [train_shard(colab_t4_tiny(), small_split, shard, run) for shard in (0, 1)]


def test_a_qlora_model_trains_lora_over_linear4bit_layers():
    from kit.model import add_lora, load_base_model

    cfg = colab_t4_tiny()
    resolve_platform(cfg, verbose=False)
    model = add_lora(load_base_model(cfg), cfg)
    quantized = [name for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7, "q, k, v, o, gate, up and down of both layers are 4-bit"
    assert all(m.weight.dtype == torch.uint8 for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.quant_type == "nf4"
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)


def test_colab_t4_on_a_cpu_says_nf4_is_in_effect(capsys):
    from kit.cli import main

    assert main(["plan", "--preset", "colab-t4"]) == 0
    err = capsys.readouterr().err
    assert f"quantize: nf4, bitsandbytes {bnb.__version__} on cpu" in err
    assert "compute dtype float32" in err and "paged_adamw_8bit" in err


def test_a_qlora_run_records_its_4_bit_base_and_its_loss_goes_down(straight):
    run, (metrics, _) = straight
    info = json.loads((run / "shard-00" / "adapter" / "kit_adapter.json").read_text())
    assert info["quantize"] == "nf4"
    history = json.loads((run / "shard-00" / "status.json").read_text())["loss_history"]
    assert history[-1][1] < history[0][1]
    assert math.isfinite(metrics["eval_loss"])


def test_an_interrupted_qlora_run_with_paged_adamw_8bit_resumes_to_the_same_adapter(straight, small_split, tmp_path):
    run, _ = straight
    with pytest.raises(Crash):
        train_shard(colab_t4_tiny(), small_split, 0, tmp_path, callbacks=[CrashAtStep(3)])
    state = torch.load(tmp_path / "shard-00" / "checkpoint-2" / "optimizer.pt", weights_only=False)["state"]
    # bitsandbytes keeps its quantized moments (uint8, with their absmax and quantile maps) under one key per param.
    moments = [s["__bnb_optimizer_quant_state__"] for s in state.values() if "__bnb_optimizer_quant_state__" in s]
    eight_bit = [m for m in moments if "qmap1" in m]  # matrices under 4096 values keep 32-bit moments
    assert len(eight_bit) >= len(state) // 2, "the checkpoint holds the optimizer's 8-bit state"
    assert all(m["state1"].dtype == m["state2"].dtype == torch.uint8 for m in eight_bit)
    resumed = train_shard(colab_t4_tiny(), small_split, 0, tmp_path)
    assert resumed["resumed_from_step"] == 2
    diff = max_abs_diff(adapter_weights(tmp_path), adapter_weights(run))
    print(f"QLoRA resume: max |adapter difference| = {diff:.3g}")
    assert diff <= 1e-6


def test_adapters_trained_on_4_bit_are_merged_and_scored_on_the_4_bit_and_the_full_base(
    straight, small_split, tmp_path
):
    from kit.compare import BothBasesEvaluator, adapter_evaluator, eval_config, format_scores, merge_and_compare

    run, _ = straight
    sources = [run / "shard-00", run / "shard-01"]
    evaluator = adapter_evaluator(eval_config("colab-t4", TINY_COLAB, sources), small_split)
    assert isinstance(evaluator, BothBasesEvaluator)
    report = merge_and_compare(sources, tmp_path / "merged", "average", evaluator=evaluator, eval_data=str(small_split))
    assert set(report["results"]) == {"base", "shard-00", "shard-01", "merged"}
    for row in report["results"].values():
        assert math.isfinite(row["eval_loss"]) and math.isfinite(row["eval_loss_full_base"])
    base = report["results"]["base"]
    assert base["eval_loss"] != base["eval_loss_full_base"], "NF4 rounding changes the base's loss"
    saved = json.loads((tmp_path / "merged" / "merge_report.json").read_text())["results"]
    assert saved["merged"]["eval_loss_full_base"] == pytest.approx(report["results"]["merged"]["eval_loss_full_base"])
    assert "eval_loss_full_base" in format_scores(report["results"])
    assert "eval_loss_full_base" in (tmp_path / "merged" / "README.md").read_text()


def test_without_preset_4_bit_adapters_are_scored_on_both_bases_too(straight):
    from kit.compare import eval_config

    run, _ = straight
    cfg = eval_config(None, [], [run / "shard-00"])
    resolve_platform(cfg, verbose=False)
    assert cfg.model.load_in_4bit, "kit_adapter.json says the adapter was trained on nf4"


def test_4_bit_without_bitsandbytes_is_one_clear_error_before_any_work(monkeypatch, small_split, tmp_path):
    import kit.platform
    from kit.errors import MissingPackageError

    real = kit.platform._importable
    monkeypatch.setattr(kit.platform, "_importable", lambda m: False if m == "bitsandbytes" else real(m))
    with pytest.raises(MissingPackageError, match=r"needs bitsandbytes.*pip install bitsandbytes.*model.quantize=none"):
        train_shard(colab_t4_tiny(), small_split, 0, tmp_path)
    assert not (tmp_path / "shard-00").exists()
