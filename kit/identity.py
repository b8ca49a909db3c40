"""What a shard trains on, recorded in every checkpoint, so a resume never mixes two runs.

    identity = run_identity(cfg, shard=3, data_sha256=manifest_sha)   # the split's shard file and the math
    Trainer(..., callbacks=[IdentityStamp(identity), ...])            # writes kit_identity.json into each save
    check_resume(checkpoint, identity)                                 # IdentityMismatch listing what differs

The identity is the shard's data (its file's sha256 in the split's manifest)
and the settings that change the math: the base model and its quantization,
LoRA, max_length and packing, the optimizer, schedule, seed, step count, the
global batch, and the fleet rounds' settings (H, the optimizer reset, the outer
step). Left out on purpose: precision, attention kernel and the
micro-batch/accumulation split, which a resume on another GPU (a T4 after an
A100, one GPU after two) may change while the math stays that of the run; and
round_timeout_minutes, how long a shard waits, which any session may change.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

from kit.checkpoints import identity_differences, read_identity
from kit.errors import IdentityMismatch
from kit.files import write_json_atomic
from kit.layout import IDENTITY, checkpoint_name

MATH_KEYS = {
    "model": ("name_or_path", "revision", "quantize"),
    "lora": ("r", "alpha", "dropout", "target_modules", "use_rslora", "init_seed"),
    "data": ("max_length", "turns", "padding_free"),
    "train": (
        "max_steps",
        "lr",
        "lr_scheduler",
        "warmup_steps",
        "weight_decay",
        "optim",
        "seed",
        "max_tokens_per_batch",
        # Fleet rounds: H sets where the weights are replaced by each round's global, the reset what the
        # optimizer carries across, and the outer step what the globals are (each shard records it).
        "round_steps",
        "round_reset_optimizer",
        "outer_lr",
        "outer_momentum",
        "outer_space",
    ),
}


def config_identity(config: dict) -> dict:
    """The math-changing keys of a config dict (RunConfig.to_dict(), or a metrics.json's "config")."""
    data = config.get("data", {})
    if "turns" not in data and "last_turn_only" in data:  # written before data.turns: the same choice, renamed
        config = {**config, "data": {**data, "turns": "last" if data["last_turn_only"] else "all"}}
    # Only the keys the config has: an older kit's stamp lacks the keys added since (see comparable).
    return {
        section: {k: config[section][k] for k in keys if k in config.get(section, {})}
        for section, keys in MATH_KEYS.items()
    }


def comparable(saved: dict, current: dict) -> dict:
    """`current` (a config_identity) narrowed to the keys `saved` has: a setting an older kit's checkpoint
    did not record (round_steps, before it was stamped) is not compared, so that checkpoint still resumes,
    as one with no stamp at all does."""
    return {
        section: {k: v for k, v in keys.items() if k in saved.get(section, {})} for section, keys in current.items()
    }


def run_identity(cfg, shard: int, data_sha256: str | None, world_size: int = 1) -> dict:
    t = cfg.train
    return {
        "shard": shard,
        "data_sha256": data_sha256,
        "config": config_identity(cfg.to_dict()),
        "global_batch": t.micro_batch_size * t.grad_accum * world_size,
    }


class IdentityStamp(TrainerCallback):
    """Writes the run's identity into each checkpoint as it is saved, before it is marked complete (and
    hashed into its marker) or pushed: it must run before CheckpointPusher and CheckpointMarker."""

    def __init__(self, identity: dict):
        self.identity = identity

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_json_atomic(Path(args.output_dir) / checkpoint_name(state.global_step) / IDENTITY, self.identity)


def check_resume(checkpoint: Path, identity: dict) -> None:
    """Refuse to resume `checkpoint` when it was trained on other data or settings (an older kit's
    checkpoint, without an identity, is resumed as before)."""
    saved = read_identity(checkpoint)
    if saved is None:
        return
    if isinstance(saved.get("config"), dict):  # read as this kit reads settings (a renamed key, its new name)
        saved = {**saved, "config": config_identity(saved["config"])}
        identity = {**identity, "config": comparable(saved["config"], identity["config"])}
    differences = identity_differences(saved, identity)
    if differences:
        raise IdentityMismatch(
            f"{checkpoint} was trained on other data or settings than this run: "
            + "; ".join(differences)
            + ". Resuming would mix two runs. Either run with the settings and data it was trained with, "
            "or give a new output to train these from the start",
            param="output",
        )


def finished_differences(metrics: dict, cfg) -> list[str]:
    """How a finished shard's settings (its metrics.json config) differ from this run's; [] when the same."""
    if "config" not in metrics:
        return []
    saved = config_identity(metrics["config"])
    return identity_differences(saved, comparable(saved, config_identity(cfg.to_dict())))
