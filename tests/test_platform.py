"""Platform decisions from faked GPUs (T4, P100, A100, H100, CPU), and how they fill a preset's `auto` knobs.

.venv/bin/python -m pytest -q tests/test_platform.py    # no GPU, no network, no model
"""

import pytest
import torch

from kit.config import available_presets, load_config, validate
from kit.platform import KNOWN_GPUS, DeviceInfo, decide, detect_devices, resolve_platform

T4, P100, A100, H100 = (KNOWN_GPUS[k] for k in ("T4", "P100", "A100", "H100"))


def test_a_t4_trains_in_fp16_with_sdpa_even_when_flash_attn_is_installed():
    d = decide([T4], has_flash_attn=True, has_bitsandbytes=True)
    assert (d.precision, d.tf32, d.attn_implementation) == ("fp16", False, "sdpa")
    assert "7.5" in d.reasons["attn_implementation"]
    assert (d.quantize, d.optim) == ("nf4", "paged_adamw_8bit")


def test_a_p100_trains_in_fp32_because_it_has_no_tensor_cores():
    d = decide([P100], has_bitsandbytes=True)
    assert (d.precision, d.tf32, d.attn_implementation) == ("fp32", False, "sdpa")
    assert "tensor cores" in d.reasons["precision"]


@pytest.mark.parametrize("gpu", [A100, H100, KNOWN_GPUS["RTX4090"]], ids=lambda g: g.name)
def test_ampere_and_newer_train_in_bf16_with_tf32_and_flash_attention_when_installed(gpu):
    with_fa = decide([gpu], has_flash_attn=True)
    assert (with_fa.precision, with_fa.tf32, with_fa.attn_implementation) == ("bf16", True, "flash_attention_2")
    assert decide([gpu], has_flash_attn=False).attn_implementation == "sdpa"


def test_without_bitsandbytes_there_is_no_4bit_and_no_paged_optimizer():
    d = decide([A100], has_bitsandbytes=False)
    assert (d.quantize, d.optim) == ("none", "adamw_torch")
    assert "pip install bitsandbytes" in d.reasons["quantize"]


def test_a_cpu_gets_fp32_sdpa_no_quantization_and_plain_adamw():
    d = decide([], has_flash_attn=True, has_bitsandbytes=True)
    assert (d.precision, d.tf32, d.attn_implementation, d.quantize, d.optim) == (
        "fp32",
        False,
        "sdpa",
        "none",
        "adamw_torch",
    )


def test_the_weakest_gpu_decides_so_every_ddp_rank_runs_the_same_program():
    assert decide([A100, T4]).precision == "fp16"


def test_auto_knobs_of_the_kaggle_t4x2_preset_resolve_for_a_t4(capsys):
    cfg = load_config("kaggle-t4x2")
    notes = resolve_platform(cfg, decide([T4, T4], "kaggle", has_bitsandbytes=True))
    assert (cfg.train.precision, cfg.train.dtype, cfg.train.fp16, cfg.train.bf16) == ("fp16", "float16", True, False)
    assert (cfg.model.load_in_4bit, cfg.train.optim, cfg.model.attn_implementation) == (
        True,
        "paged_adamw_8bit",
        "kit_packed_sdpa",  # packed rows on a T4: no FlashAttention-2 there
    )
    assert len(notes) == 4 and validate(cfg) == []
    out = capsys.readouterr().out
    assert "2 x Tesla T4" in out and "train.precision = fp16" in out
    assert resolve_platform(cfg, decide([T4])) == [], "a resolved config has nothing left to decide"


def test_explicit_values_are_kept_and_cpu_tiny_is_untouched_by_the_platform():
    cfg = load_config("cpu-tiny")
    before = cfg.to_dict()
    assert resolve_platform(cfg, decide([H100], has_flash_attn=True, has_bitsandbytes=True)) == []
    assert cfg.to_dict() == before
    colab = load_config("colab-t4", ["train.precision=fp16"])
    resolve_platform(colab, decide([A100], has_flash_attn=True), verbose=False)
    assert colab.train.dtype == "float16" and colab.train.fp16, "a written fp16 is kept on an A100"
    assert colab.model.attn_implementation == "flash_attention_2"


@pytest.mark.parametrize("preset", available_presets())
@pytest.mark.parametrize("gpus", [[], [T4], [P100], [A100], [H100]], ids=["cpu", "t4", "p100", "a100", "h100"])
def test_every_preset_resolves_to_a_valid_config_on_every_device(preset, gpus):
    cfg = load_config(preset)
    resolve_platform(cfg, decide(gpus, has_flash_attn=True, has_bitsandbytes=bool(gpus)), verbose=False)
    assert validate(cfg) == []
    assert "auto" not in (cfg.train.precision, cfg.model.attn_implementation, cfg.model.quantize, cfg.train.optim)
    if not gpus:
        assert not cfg.model.load_in_4bit or preset == "colab-t4", "auto never asks for 4-bit without CUDA"


def test_device_properties_are_read_from_torch_cuda(monkeypatch):
    class Props:
        name, major, minor, total_memory = "Tesla T4", 7, 5, 15_843_721_216

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props)
    assert detect_devices() == [DeviceInfo("Tesla T4", 7, 5, 14.8)] * 2


@pytest.mark.parametrize("gpus", [[], [T4], [P100]], ids=["cpu", "t4", "p100"])
def test_auto_attention_for_packed_rows_without_flash_attention_is_kit_packed_sdpa(gpus):
    cfg = load_config("cpu-tiny", ["model.attn_implementation=auto", "data.padding_free=true"])
    notes = resolve_platform(cfg, decide(gpus, has_flash_attn=True), verbose=False)
    assert cfg.model.attn_implementation == "kit_packed_sdpa"
    assert any("T x T mask" in n for n in notes)
    padded = load_config("cpu-tiny", ["model.attn_implementation=auto", "data.padding_free=false"])
    resolve_platform(padded, decide(gpus), verbose=False)
    assert padded.model.attn_implementation == "sdpa", "padded batches gain nothing from it"


def test_auto_attention_for_packed_rows_keeps_flash_attention_where_it_runs():
    cfg = load_config("cpu-tiny", ["model.attn_implementation=auto", "data.padding_free=true"])
    resolve_platform(cfg, decide([A100], has_flash_attn=True), verbose=False)
    assert cfg.model.attn_implementation == "flash_attention_2"


@pytest.mark.parametrize(
    "precision,on_cuda,expected",
    [
        ("fp16", True, "float16"),
        ("bf16", True, "bfloat16"),
        ("fp32", True, "float32"),
        ("fp16", False, "float32"),
        ("bf16", False, "float32"),
    ],
)
def test_4_bit_layers_compute_in_the_runs_half_precision_on_cuda_and_in_fp32_on_a_cpu(
    monkeypatch, precision, on_cuda, expected
):
    from kit.platform import compute_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: on_cuda)
    cfg = load_config("colab-t4", [f"train.precision={precision}"])
    resolve_platform(cfg, decide([T4] if on_cuda else []), verbose=False)
    assert cfg.model.load_in_4bit
    assert compute_dtype(cfg) == expected


def test_auto_quantization_on_a_cpu_stays_full_precision_and_says_how_to_get_nf4():
    d = decide([], has_bitsandbytes=True)
    assert d.quantize == "none" and "model.quantize=nf4" in d.reasons["quantize"]
