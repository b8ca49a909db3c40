"""The runtime a shard trains on, and what follows from its GPUs: precision, attention, 4-bit, optimizer.

    devices = detect_devices()                     # [] on CPU; one DeviceInfo per visible GPU
    decisions = decide(devices)                    # pure: tests pass fake T4 / P100 / A100 / H100 lists
    notes = resolve_platform(cfg)                  # fills every `auto` knob of cfg, prints what and why

Knobs a preset can leave to this module by writing `auto` (anything else is kept as written):

    train.precision: auto       -> bf16 on compute capability >= 8.0 (A100, H100, RTX 30xx/40xx),
                                   fp16 on 7.x (T4, V100), fp32 below (P100: fp16 has no tensor
                                   cores there and the loss scaler only costs time) and on CPU.
                                   (the weights' dtype and the Trainer's mixed precision follow it)
    model.attn_implementation: auto -> flash_attention_2 when `flash_attn` imports and cc >= 8.0, else sdpa;
                                   with data.padding_free, kit_packed_sdpa instead of sdpa (kit/attention.py:
                                   a packed row runs example by example, not through one T x T mask).
    model.quantize: auto        -> nf4 (QLoRA: 4-bit NF4, double quantization, bitsandbytes) on CUDA
                                   with bitsandbytes installed, else none.
                                   An explicit nf4 runs wherever bitsandbytes does, CPU included (fp32
                                   compute there): `quantization_in_effect(cfg)` says what a run gets.
    train.optim: auto           -> paged_adamw_8bit with bitsandbytes on CUDA (optimizer state in 8 bit,
                                   paged to host memory under pressure), else adamw_torch.

TF32 matmuls are switched on for Ampere and newer whenever precision is auto: fp32
matmuls then run on tensor cores at ~10 bits of mantissa, harmless for LoRA.

Tested by tests/test_platform.py (`.venv/bin/python -m pytest -q tests/test_platform.py`, no GPU needed).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

from kit.config import RunConfig
from kit.errors import MissingPackageError
from kit.runtime import runtime_name

AUTO = "auto"


@dataclass(frozen=True)
class DeviceInfo:
    """One GPU, as torch.cuda.get_device_properties describes it."""

    name: str
    major: int
    minor: int
    memory_gb: float

    @property
    def capability(self) -> float:
        return self.major + self.minor / 10


# What tests (and `kit plan --gpu NAME`-style what-ifs) fake; figures from each card's properties.
KNOWN_GPUS = {
    "T4": DeviceInfo("Tesla T4", 7, 5, 15.6),
    "P100": DeviceInfo("Tesla P100-PCIE-16GB", 6, 0, 15.9),
    "A100": DeviceInfo("NVIDIA A100-SXM4-40GB", 8, 0, 39.4),
    "H100": DeviceInfo("NVIDIA H100 80GB HBM3", 9, 0, 79.1),
    "RTX4090": DeviceInfo("NVIDIA GeForce RTX 4090", 8, 9, 23.6),
}


@dataclass
class Decisions:
    """What the hardware allows; `reasons` says why, one line per knob."""

    runtime: str
    devices: list[DeviceInfo]
    precision: str  # fp32 | fp16 | bf16
    tf32: bool
    attn_implementation: str
    quantize: str  # nf4 | none
    optim: str
    reasons: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.devices:
            return f"{self.runtime}, CPU only"
        d = self.devices[0]
        cc = f"compute capability {d.major}.{d.minor}"
        return f"{self.runtime}, {len(self.devices)} x {d.name} ({cc}, {d.memory_gb:.0f} GB)"


def detect_devices() -> list[DeviceInfo]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        out.append(DeviceInfo(p.name, p.major, p.minor, round(p.total_memory / 2**30, 1)))
    return out


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def decide(
    devices: list[DeviceInfo], runtime: str = "local", has_flash_attn: bool = False, has_bitsandbytes: bool = False
) -> Decisions:
    """The choices for these devices; a pure function of its arguments."""
    reasons = {}
    if not devices:
        reasons = {
            "precision": "fp32: CPU (bf16 matmuls are slower than fp32 on most CPUs, fp16 AMP needs CUDA)",
            "attn_implementation": "sdpa: no GPU, so no FlashAttention-2",
            "quantize": (
                "none: on a CPU full-precision weights train faster than 4-bit ones dequantized at every "
                "matmul; model.quantize=nf4 runs QLoRA here too when bitsandbytes is installed"
            ),
            "optim": "adamw_torch: paging optimizer state to host memory means nothing without a GPU",
        }
        return Decisions(runtime, [], "fp32", False, "sdpa", "none", "adamw_torch", reasons)
    # The weakest card decides: under DDP every rank must run the same program.
    cc = min(d.capability for d in devices)
    name = min(devices, key=lambda d: d.capability).name
    if cc >= 8.0:
        precision, why = "bf16", f"bf16: {name} has compute capability {cc} >= 8.0 (bf16 needs no loss scaling)"
    elif cc >= 7.0:
        precision, why = "fp16", f"fp16: {name} (compute capability {cc}) has fp16 tensor cores but no bf16"
    else:
        precision, why = (
            "fp32",
            (
                f"fp32: {name} (compute capability {cc}) has no tensor cores, so fp16 "
                "would add loss scaling without a speedup"
            ),
        )
    reasons["precision"] = why
    tf32 = cc >= 8.0
    reasons["tf32"] = (
        "on: Ampere or newer runs fp32 matmuls on tensor cores" if tf32 else "off: needs compute capability >= 8.0"
    )
    if has_flash_attn and cc >= 8.0:
        attn = "flash_attention_2"
        reasons["attn_implementation"] = "flash_attention_2: flash_attn is installed and compute capability >= 8.0"
    else:
        attn = "sdpa"
        why = (
            "flash_attn is not installed"
            if cc >= 8.0
            else f"FlashAttention-2 needs compute capability >= 8.0, {name} has {cc}"
        )
        reasons["attn_implementation"] = f"sdpa: {why}"
    if has_bitsandbytes:
        quantize, optim = "nf4", "paged_adamw_8bit"
        reasons["quantize"] = "nf4: 4-bit NF4 base weights with double quantization (QLoRA), ~4x less weight memory"
        reasons["optim"] = "paged_adamw_8bit: 8-bit optimizer state, paged to host memory on a spike instead of OOM"
    else:
        quantize, optim = "none", "adamw_torch"
        missing = "bitsandbytes is not installed (`pip install bitsandbytes`)"
        reasons["quantize"], reasons["optim"] = f"none: {missing}", f"adamw_torch: {missing}"
    return Decisions(runtime, list(devices), precision, tf32, attn, quantize, optim, reasons)


def resolve_platform(cfg: RunConfig, decisions: Decisions | None = None, verbose: bool = True) -> list[str]:
    """Replace every `auto` knob in cfg by the decision for this machine; return (and print) one note per change.

    Idempotent: a second call finds no `auto` left and says nothing."""
    if decisions is None:
        if not _has_auto(cfg):
            return []
        decisions = decide(detect_devices(), runtime_name(), _importable("flash_attn"), _importable("bitsandbytes"))
    notes = []
    if cfg.train.precision == AUTO:
        cfg.train.precision = decisions.precision
        notes.append(f"train.precision = {decisions.precision} ({decisions.reasons['precision']})")
        if decisions.tf32:
            import torch

            # Process-wide and only meaningful on CUDA; harmless to set elsewhere.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            notes.append(f"tf32 {decisions.reasons['tf32']}")
    if cfg.model.attn_implementation == AUTO:
        attn, why = decisions.attn_implementation, decisions.reasons["attn_implementation"]
        if attn == "sdpa" and cfg.data.padding_free:
            # decide() knows the hardware only; packing is the config's. Without FlashAttention-2's varlen
            # kernel, sdpa would isolate each packed row with a T x T mask (O(T^2) work, not sum(n_i^2)).
            attn = "kit_packed_sdpa"
            why = f"{why}; data.padding_free runs each packed example on its own instead of through a T x T mask"
        cfg.model.attn_implementation = attn
        notes.append(f"model.attn_implementation = {attn} ({why})")
    if cfg.model.quantize == AUTO:
        cfg.model.quantize = decisions.quantize
        notes.append(f"model.quantize = {decisions.quantize} ({decisions.reasons['quantize']})")
    if cfg.train.optim == AUTO:
        cfg.train.optim = decisions.optim
        notes.append(f"train.optim = {decisions.optim} ({decisions.reasons['optim']})")
    if verbose and notes:
        print(f"platform: {decisions.summary()}")
        for note in notes:
            print(f"  {note}")
    return notes


def compute_dtype(cfg: RunConfig) -> str:
    """The dtype 4-bit layers dequantize to for their matmuls: the run's half precision on CUDA, fp32 on a
    CPU (its bf16/fp16 matmuls are slower than fp32 ones, and fp16 AMP needs CUDA anyway)."""
    import torch

    if not torch.cuda.is_available():
        return "float32"
    return cfg.train.dtype


def require_bitsandbytes(what: str) -> None:
    """One error, naming both fixes, where 4-bit weights or 8-bit optimizers are asked for without bitsandbytes."""
    if not _importable("bitsandbytes"):
        raise MissingPackageError(
            f"{what} needs bitsandbytes, which is not installed: `pip install bitsandbytes` (or kit with its gpu "
            "extra, `pip install 'kit[gpu]'`); or set model.quantize=none to train on full-precision weights"
        )


def check_platform_packages(cfg: RunConfig) -> None:
    """The packages a resolved config's choices need are importable (bitsandbytes for 4-bit and 8-bit optimizers)."""
    if cfg.model.load_in_4bit:
        require_bitsandbytes("model.quantize=nf4")
    if "8bit" in cfg.train.optim:
        require_bitsandbytes(f"train.optim={cfg.train.optim}")


def quantization_in_effect(cfg: RunConfig) -> str:
    """One line: the quantization this config gets on this machine (`kit plan` and every training run print it)."""
    if not cfg.model.load_in_4bit:
        return "quantize: none (full-precision base weights)"
    import importlib.metadata

    import torch

    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return "quantize: nf4 asked for, but bitsandbytes is not installed (`pip install bitsandbytes`)"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return (
        f"quantize: nf4, bitsandbytes {version} on {device} "
        f"(double quantization, compute dtype {compute_dtype(cfg)}; optimizer {cfg.train.optim})"
    )


def _has_auto(cfg: RunConfig) -> bool:
    return AUTO in (cfg.train.precision, cfg.model.attn_implementation, cfg.model.quantize, cfg.train.optim)
