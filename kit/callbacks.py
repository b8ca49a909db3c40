"""Trainer callbacks: mark complete checkpoints, and keep `status.json` current.

`status.json` is what a person (or `kit status`) reads to know how a shard is
doing without opening its notebook:

    {"shard": 0, "state": "running", "step": 40, "max_steps": 100, "loss": 1.23,
     "tokens_per_s": 812.5, "eta_s": 310, "updated_at": "2026-11-21T12:00:00+00:00",
     "loss_history": [[10, 2.1], [20, 1.6], ...]}

`state` is one of running, done, stopped_for_time, failed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from transformers import TrainerCallback

from kit.checkpoints import mark_complete
from kit.files import read_json, write_json_atomic
from kit.layout import checkpoint_name
from kit.progress import RunRate, loss_history

STATES = ("running", "done", "stopped_for_time", "failed")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StatusFile:
    """Merges updates into status.json, always written whole and atomically."""

    def __init__(self, path: str | Path, shard: int):
        self.path = Path(path)
        self.shard = shard

    def read(self) -> dict:
        return read_json(self.path, default={}) or {}

    def update(self, **fields) -> dict:
        if "state" in fields and fields["state"] not in STATES:
            raise ValueError(f"state {fields['state']!r} is not one of {STATES}")
        status = self.read()
        status.update(fields, shard=self.shard, updated_at=utc_now())
        write_json_atomic(self.path, status)
        return status


class CheckpointMarker(TrainerCallback):
    """Marks `checkpoint-N` complete after the Trainer has written all of it.

    `on_save` fires after `_save_checkpoint` returns: model, optimizer, scheduler,
    RNG state and trainer state are all on disk by then.
    """

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            mark_complete(Path(args.output_dir) / checkpoint_name(state.global_step))


class StatusCallback(TrainerCallback):
    """Writes step, loss, tokens/s and ETA into status.json at every log."""

    def __init__(self, status: StatusFile):
        self.status = status
        self.rate = RunRate()

    def on_train_begin(self, args, state, control, **kwargs):
        self.rate.start(state)
        if state.is_world_process_zero:
            self.status.update(state="running", step=state.global_step, max_steps=state.max_steps)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not self.rate.started:
            return
        fields = {
            "state": "running",
            "step": state.global_step,
            "max_steps": state.max_steps,
            "tokens_seen": state.num_input_tokens_seen,
            "tokens_per_s": round(self.rate.tokens_per_s(state), 1),
        }
        if logs and "loss" in logs:
            fields["loss"] = round(float(logs["loss"]), 6)
            # From log_history, which a resume restores: the curve in `kit status` survives a restart.
            fields["loss_history"] = loss_history(state.log_history)
        eta = self.rate.eta_s(state)
        if eta is not None:
            fields["eta_s"] = round(eta, 1)
        self.status.update(**fields)
