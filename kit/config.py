"""The run config: typed sections, presets from YAML, `key=value` overrides, validation.

A run is a preset plus overrides:

    cfg = load_config("cpu-tiny", ["train.max_steps=4", "lora.r=8"])
    python -m kit plan --preset cpu-tiny --set train.max_steps=4   # (CLI view)

A preset is a name from `configs/` (`cpu-tiny`, `cpu-demo`, `colab-t4`, ...) or
the path of a YAML file. Every problem in a preset or the overrides (unknown
key, wrong type, bad value) is collected and raised as one `ConfigError` that
names each offending key and how to fix it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import yaml

from kit.errors import ConfigError
from kit.layout import kit_cache_dir

PRECISION_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
PRECISIONS = ("auto", *PRECISION_DTYPE)
QUANTIZATIONS = ("auto", "nf4", "none")
TURNS = ("all", "last", "split")  # data.turns (kit/data/tokenize.py)
OUTER_SPACES = ("svd", "factors")  # train.outer_space: where kit/rounds.py's outer step runs
TRACKERS = ("trackio", "tensorboard", "wandb")  # train.report_to (kit/trackers.py)
# Older spellings, refused with the one key that replaced them (one spelling per knob).
RENAMED = {
    "model.dtype": "train.precision (fp32 | fp16 | bf16 | auto): it sets the weights' dtype and mixed precision",
    "train.fp16": "train.precision=fp16",
    "train.bf16": "train.precision=bf16",
    "model.load_in_4bit": "model.quantize=nf4 (or none, or auto)",
    "data.last_turn_only": "data.turns=last (or all, or split)",
}


@dataclass
class ModelSection:
    name_or_path: str = "${KIT_CACHE}/models/tiny-smollm2"
    """Local folder or Hub id of the base model. `${KIT_CACHE}` is ~/.cache/kit unless set."""
    revision: str = "main"
    """Hub revision of the base model (recorded in the adapter for the merge's compatibility check)."""
    hub_id: str = ""
    """The Hub id a local name_or_path is a copy of: model cards name it as base_model (never a local
    path); "" = name_or_path when that is a Hub id, else no base_model in the cards."""
    attn_implementation: str = "sdpa"
    """auto | sdpa | eager | flash_attention_2 | kit_packed_sdpa (kit/attention.py: sdpa that runs a
    padding-free row example by example, without transformers' T x T mask; auto picks it for
    data.padding_free without FlashAttention-2)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about 30% slower."""
    quantize: str = "none"
    """none | nf4 | auto. nf4 is QLoRA: NF4 4-bit base weights with double quantization (bitsandbytes; CUDA,
    or CPU with fp32 compute). auto picks nf4 on CUDA with bitsandbytes installed (kit/platform.py)."""

    @property
    def load_in_4bit(self) -> bool:
        return self.quantize == "nf4"


@dataclass
class LoraSection:
    r: int = 16
    """Adapter rank: higher fits more, costs memory and merge size."""
    alpha: int = 32
    """Scaling numerator: the update is (alpha / r) * B @ A."""
    dropout: float = 0.05
    target_modules: str = "all-linear"
    """PEFT target modules: "all-linear" or a comma-separated list of module names."""
    use_rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r)."""
    init_seed: int = 0
    """Seed of the LoRA init; the same on every shard so the adapters start from one point."""


@dataclass
class DataSection:
    max_length: int = 1024
    """Tokens per example; longer examples are cut at the end (dropped if no answer token is left)."""
    turns: str = "all"
    """Which assistant turns train: all (in one sequence; a conversation whose earlier answers the
    template rewrites, as Qwen3 drops their reasoning, becomes one example per turn) | last | split (one
    example per turn, the conversation cut right after it) (kit/data/tokenize.py)."""
    padding_free: bool = False
    """Pack each micro-batch into one row with no padding (examples still can't see each other);
    batches then hold up to train.max_tokens_per_batch tokens instead of micro_batch_size examples."""
    group_by_length: bool = False
    """Padded mode: batch examples of similar length together, so little padding is computed."""


@dataclass
class TrainSection:
    max_steps: int = 100
    """Optimizer steps for the shard."""
    save_steps: int = 20
    """A checkpoint every this many steps: the most a crash or a disconnect can lose."""
    micro_batch_size: int = 8
    """Examples per forward pass; lower it first when memory is short."""
    max_tokens_per_batch: int = 0
    """With data.padding_free: tokens per forward pass; 0 = micro_batch_size * data.max_length."""
    grad_accum: int = 1
    """Micro-batches per optimizer step: global batch = micro_batch_size * grad_accum * GPUs."""
    lr: float = 2e-4
    seed: int = 0
    """Seed of the data order and dropout; with it the run is reproducible and resumable bit for bit on CPU."""
    warmup_steps: int = 0
    lr_scheduler: str = "cosine"
    weight_decay: float = 0.0
    optim: str = "adamw_torch"
    """adamw_torch | paged_adamw_8bit | adamw_8bit (bitsandbytes; paging only helps on CUDA) | auto | ..."""
    precision: str = "fp32"
    """fp32 | fp16 | bf16 | auto: the base weights' dtype and the Trainer's mixed precision together;
    auto asks the GPU (kit/platform.py)."""
    session_hours: float = 0.0
    """Session time limit: stop cleanly (checkpoint saved, state stopped_for_time) before it; 0 = none
    (kit/budget.py)."""
    round_steps: int = 0
    """Fleet rounds (kit/rounds.py): every this many steps the shards meet through the run's remote and the
    next round starts from the outer step's global adapter; 0 = one-shot shards, merged at the end."""
    round_timeout_minutes: float = 60.0
    """How long a shard that finished a round waits for the others; then the round closes without them
    (they join the next round from its global)."""
    outer_lr: float = 1.0
    """The outer step's learning rate: 1 with outer_momentum 0 is plain averaging; DiLoCo uses 0.7 with 0.9."""
    outer_momentum: float = 0.0
    """The outer step's Nesterov momentum (0 = none)."""
    round_reset_optimizer: bool = False
    """Drop each shard's AdamW moments at every round's start (True); False keeps them, as DiLoCo does.
    Kept is measured better with each at its best lr (BENCHMARKS.md "Rounds", cpu-demo, 4 shards x 20
    steps, H=2: kept 0.039 eval loss at lr 4e-3, reset 0.059 at its best, 1e-3). Dropping them only pays
    at an lr too low for the run: fresh moments take full-size first steps, which make up for it."""
    outer_space: str = "factors"
    """Where the outer step runs (kit/rounds.py): "factors" (on A and B themselves: the shards' coordinates,
    and so any optimizer state they keep, kept; its error against the exact mean recorded) or "svd" (exact
    in dW space, back to rank r by SVD: as good with the optimizer reset each round, much worse with the
    moments kept, kit's default, as the SVD's new basis rotates under them)."""
    logging_steps: int = 1
    report_to: str = "none"
    """Experiment trackers: none | trackio | tensorboard | wandb, or several ("trackio,tensorboard");
    every shard of a run reports to one project under the name REPO/shard-II (kit/trackers.py)."""
    trackio_space_id: str = ""
    """With report_to=trackio: the Hugging Face Space (USER/NAME) every shard of the run logs to; "" = local only."""
    heartbeat_minutes: float = 5.0
    """A Hub run pushes the shard's status (and renews its lease) this often between checkpoints; `kit status`
    calls a shard stale after 3 missed beats, and a lease that old can be taken over (kit/lease.py)."""
    save_total_limit: int = 2
    """Local checkpoints kept; older ones are deleted after a newer one is complete."""

    # What the Trainer and the model loader read, derived from the one knob (after kit/platform.py resolved auto).
    @property
    def fp16(self) -> bool:
        return self.precision == "fp16"

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    @property
    def dtype(self) -> str:
        """The base weights' torch dtype name: float32 | float16 | bfloat16."""
        return PRECISION_DTYPE.get(self.precision, "float32")


@dataclass
class EvalSection:
    max_samples: int = 0
    """Eval examples used for the eval loss; 0 = all of the eval split."""
    generate_samples: int = 32
    """Eval prompts answered by greedy generation for the JSON validity rate."""
    max_new_tokens: int = 128
    batch_size: int = 8


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    preset: str = ""
    """Where this config came from (set by load_config)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def tokens_per_batch(self) -> int:
        """The packed micro-batch's token budget (data.padding_free)."""
        return self.train.max_tokens_per_batch or self.train.micro_batch_size * self.data.max_length

    def resolved_model_path(self) -> str:
        return expand_path(self.model.name_or_path)


SECTIONS = ("model", "lora", "data", "train", "eval")


def expand_path(value: str) -> str:
    """Expand `${KIT_CACHE}` (with its default), other environment variables and `~`."""
    value = value.replace("${KIT_CACHE}", str(kit_cache_dir()))
    return os.path.expanduser(os.path.expandvars(value))


def presets_dir() -> Path:
    """The presets folder: `configs/` of a checkout, or `kit/configs/` of an installed wheel."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "configs"
    if checkout.is_dir() and (here.parent / "pyproject.toml").is_file():
        return checkout
    # Not importlib.resources.files("kit.configs"): kit/configs has no __init__.py, so that is a
    # namespace package and files() answers a MultiplexedPath, whose str() is no folder.
    return here / "configs"


def available_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.yaml"))


def parse_overrides(text: str | list[str] | None) -> list[str]:
    """Overrides from a notebook parameter: `"train.lr=1e-4; lora.r=8"` (`;` or newlines between them) or a list."""
    if not text:
        return []
    if isinstance(text, (list, tuple)):
        return [str(t) for t in text]
    return [part.strip() for part in re.split(r"[;\n]", text) if part.strip()]


def load_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Build a RunConfig from a preset name or YAML path plus `section.key=value` overrides."""
    path = Path(preset)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = presets_dir() / f"{preset}.yaml"
        if not path.is_file():
            names = ", ".join(available_presets())
            raise ConfigError(
                f"unknown preset {preset!r}: use one of {names}, or the path of a YAML file", param="preset"
            )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(
            f"{where}: not valid YAML ({getattr(e, 'problem', None) or e}); fix that line", param="preset"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a preset is a mapping of sections (model, lora, data, train, eval)")
    errors: list[str] = []
    cfg = RunConfig(preset=str(preset))
    for section, values in raw.items():
        if section not in SECTIONS:
            errors.append(_unknown(f"{section}", SECTIONS, where=str(path)))
            continue
        if not isinstance(values, dict):
            errors.append(f"{path}: `{section}` must be a mapping of keys")
            continue
        for key, value in values.items():
            _assign(cfg, f"{section}.{key}", value, errors, where=str(path))
    for item in overrides:
        if "=" not in item:
            errors.append(f"override {item!r}: write it as section.key=value, e.g. train.lr=1e-4")
            continue
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text  # not YAML: kept as the string it is, and type-checked like any value
        _assign(cfg, key.strip(), value, errors, where="--set")
    errors += validate(cfg)
    if errors:
        raise ConfigError("config is not valid:\n  - " + "\n  - ".join(errors))
    return cfg


def validate(cfg: RunConfig) -> list[str]:
    """Value checks that types alone can't express; each message names the key and the fix."""
    errors = []
    t = cfg.train
    for key in ("max_steps", "save_steps", "micro_batch_size", "grad_accum", "logging_steps"):
        if getattr(t, key) < 1:
            errors.append(f"train.{key}={getattr(t, key)}: must be at least 1")
    if t.lr <= 0:
        errors.append(f"train.lr={t.lr}: must be positive")
    if cfg.lora.r < 1:
        errors.append(f"lora.r={cfg.lora.r}: must be at least 1")
    if not 0 <= cfg.lora.dropout < 1:
        errors.append(f"lora.dropout={cfg.lora.dropout}: must be in [0, 1)")
    if cfg.data.max_length < 8:
        errors.append(f"data.max_length={cfg.data.max_length}: must be at least 8")
    if cfg.data.padding_free and cfg.data.group_by_length:
        errors.append(
            "data.padding_free and data.group_by_length are both true: packing needs no length grouping; choose one"
        )
    if t.max_tokens_per_batch and t.max_tokens_per_batch < cfg.data.max_length:
        errors.append(
            f"train.max_tokens_per_batch={t.max_tokens_per_batch} is below data.max_length={cfg.data.max_length}: "
            "the longest example would not fit; raise it or lower data.max_length"
        )
    for key, value, allowed in (
        ("train.precision", t.precision, PRECISIONS),
        ("model.quantize", cfg.model.quantize, QUANTIZATIONS),
        ("data.turns", cfg.data.turns, TURNS),
        ("train.outer_space", t.outer_space, OUTER_SPACES),
    ):
        if value not in allowed:
            errors.append(f"{key}={value!r}: use one of {', '.join(allowed)}")
    try:
        report_targets(t.report_to)
    except ValueError as e:
        errors.append(f"train.report_to={t.report_to!r}: unknown tracker {e}")
    if t.round_steps < 0 or (t.round_steps and t.max_steps % t.round_steps):
        errors.append(
            f"train.round_steps={t.round_steps}: must be 0 (no rounds) or divide train.max_steps={t.max_steps}"
        )
    if t.outer_lr <= 0 or not 0 <= t.outer_momentum < 1 or t.round_timeout_minutes <= 0:
        errors.append(
            f"train.outer_lr={t.outer_lr}, train.outer_momentum={t.outer_momentum}, train.round_timeout_minutes="
            f"{t.round_timeout_minutes}: the lr and the timeout must be positive, the momentum in [0, 1)"
        )
    if t.heartbeat_minutes <= 0:
        errors.append(f"train.heartbeat_minutes={t.heartbeat_minutes}: must be positive (5 is the default)")
    if t.session_hours < 0:
        errors.append(f"train.session_hours={t.session_hours}: must be 0 (no limit) or positive")
    return errors


def report_targets(value: str) -> list[str]:
    """`train.report_to` as a list: "none" or "" -> []; "trackio,tensorboard" -> both; unknown names: ValueError."""
    names = [n.strip().lower() for n in re.split(r"[,\s]+", value or "") if n.strip()]
    if names in ([], ["none"]):
        return []
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} (use none or any of {', '.join(TRACKERS)})")
    return list(dict.fromkeys(names))


LORA_LR_RANGE = (1e-6, 1e-2)
"""Learning rates LoRA fine-tuning uses (1e-5 to 1e-3 in practice); outside it a run is almost surely a typo."""


def config_warnings(cfg: RunConfig) -> list[str]:
    """Values that are valid but can't be what was meant: warned about, never refused."""
    low, high = LORA_LR_RANGE
    if not low <= cfg.train.lr <= high:
        return [
            f"train.lr={cfg.train.lr:g} is far outside LoRA's usual {low:g} to {high:g} (1e-4 to 1e-3 is typical); "
            "training will run, but check it is what you meant"
        ]
    return []


def _unknown(key: str, valid, where: str) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(valid)}"


def _assign(cfg: RunConfig, dotted: str, value: Any, errors: list[str], where: str) -> None:
    if dotted in RENAMED:
        errors.append(f"{where}: {dotted} is no longer a key: use {RENAMED[dotted]}")
        return
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] not in SECTIONS:
        all_keys = [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(cfg, s))]
        errors.append(_unknown(dotted, all_keys, where))
        return
    section = getattr(cfg, parts[0])
    names = [f.name for f in dataclasses.fields(section)]
    if parts[1] not in names:
        errors.append(_unknown(dotted, [f"{parts[0]}.{n}" for n in names], where))
        return
    expected = get_type_hints(type(section))[parts[1]]
    try:
        setattr(section, parts[1], _coerce(value, expected))
    except (TypeError, ValueError):
        errors.append(f"{where}: {dotted}={value!r} is not {_type_name(expected)}")


def _type_name(t) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return names.get(t, getattr(t, "__name__", str(t)))


def _coerce(value: Any, expected):
    """Accept YAML's natural types; refuse lossy ones (a float for an int, a string for a bool)."""
    if get_origin(expected) is not None:  # e.g. list[str]
        expected = get_origin(expected)
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        return value
    if expected is float:
        if isinstance(value, bool):
            raise TypeError
        if isinstance(value, str) and re.fullmatch(r"[-+]?\d*\.?\d+(e[-+]?\d+)?", value.strip(), re.I):
            return float(value)  # YAML 1.1 reads "1e-4" as a string
        if not isinstance(value, (int, float)):
            raise TypeError
        return float(value)
    if expected is str:
        if isinstance(value, list):  # target_modules: [q_proj, v_proj]
            return ",".join(str(v) for v in value)
        if isinstance(value, (dict, bool)) or value is None:
            raise TypeError
        return str(value)
    return value
