"""Fleet rounds, the outer step: from a round's global adapter and the shards' adapters after H steps, the next global.

    new, state, record = outer_step(start, shards, weights=[27, 27, 26, 26], lr=0.7, momentum=0.9, state=state)
    save_global(new, start, "rounds/001/global/"); save_outer_state(state, "rounds/001/outer_state.safetensors")
    Trainer(..., callbacks=[RoundStart(global_dir), RoundBoundary(round_steps)])   # a shard's side of a round

This is DiLoCo's outer loop, on LoRA adapters. Each shard trains H steps from the
round's global adapter G (update dW_G = s B_G A_G); its change is dW_i - dW_G. The
round's change is the weighted mean of those changes, computed exactly in dW
space from the factors (kit/merge.py's concatenation: no d x d matrix is formed):

    delta = sum_i w_i s B_i A_i - s B_G A_G            (rank N r + r, exact)

The outer optimizer treats -delta as its gradient. Plain averaging is lr 1 with no
momentum (the next global is then exactly the weighted average of the shards);
DiLoCo uses Nesterov momentum mu with an outer learning rate lr:

    v <- mu v + delta;      dW_next = dW_G + lr (delta + mu v)

(torch.optim.SGD(nesterov=True)'s update with the gradient -delta; tested against it
on dense matrices). The velocity v is kept as factors too, truncated by SVD to
`state_rank` per module (default: the rank of one round's delta, N r + r, which holds
a round exactly); its truncation error is recorded.

The next global must be a rank-r LoRA adapter again, so the shards can train it. Two
ways, `space` (train.outer_space):

- "factors" (the default): the outer step on A and B themselves, DiLoCo's own setting
  (it steps on the parameters). The next global keeps the shards' coordinates, so each
  shard's AdamW moments, kept across rounds, still fit it. It is not the exact mean of
  the updates (cross terms B_i A_j); that error against the exact mean is measured
  and recorded every round.
- "svd": dW_next exactly, then brought to rank r by truncated SVD (kit/merge.py's
  svd_factors: QR of the factors, the SVD of a small core), the best rank-r
  approximation (Eckart-Young), its A rescaled to the scale of the round's start
  (`rescale_like`), stored with the shards' scaling s (B / s).

Why factors, measured (BENCHMARKS.md, "Rounds": cpu-demo, 4 shards x 20 steps, H=5,
plain averaging, lr 1e-3). With each shard's optimizer state kept across rounds (kit's
default), factor space's error against the exact mean was at most 0.23% a round and
its adapter reached eval loss 0.092 (40% task accuracy); the SVD's own error was at
most 0.25%, yet its adapter reached only 0.157 (18%). The SVD's new basis (U, V) is a
rotation of the coordinates the kept optimizer moments were built in; the next
round's first steps undo it. With the moments reset each round the two tie: 0.0777
(factors) and 0.0772 (svd), 53% each. Factors are right either way, and cost no SVD.

A shard's side: its Trainer keeps max_steps for the whole shard (one learning-rate
schedule over every round); RoundBoundary ends each `train()` with a checkpoint at a
multiple of H; the next round resumes that checkpoint (data position, RNG, and the
inner optimizer state, which DiLoCo and kit keep; train.round_reset_optimizer drops
it) and RoundStart copies the round's global adapter into the LoRA weights in place
before the first step.
scripts/bench_rounds.py runs a fleet of rounds this way in one process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from kit.config import OUTER_SPACES
from kit.files import read_json, write_json_atomic
from kit.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS, ROUND_MARK, checkpoint_name, checkpoint_step
from kit.merge import Adapter, Factors, concat_factors, relative_errors, save_lora, svd_factors


@dataclass(frozen=True)
class Outer:
    """The outer optimizer of a run's rounds (train.outer_lr, train.outer_momentum, train.outer_space)."""

    lr: float = 1.0
    momentum: float = 0.0
    space: str = "factors"

    @classmethod
    def of(cls, train_cfg) -> Outer:
        return cls(train_cfg.outer_lr, train_cfg.outer_momentum, train_cfg.outer_space)


def _dense(factors: Factors) -> dict[str, torch.Tensor]:
    return {m: b.double() @ a.double() for m, (a, b) in factors.items()}


def _scale(factors: Factors, c: float) -> Factors:
    return {m: (a, c * b) for m, (a, b) in factors.items()}


def _concat(*parts: Factors) -> Factors:
    """Factors whose B @ A is the sum of the parts' (rank adds up; exact)."""
    out = {}
    for module in parts[0]:
        out[module] = (
            torch.cat([p[module][0].float() for p in parts], dim=0),
            torch.cat([p[module][1].float() for p in parts], dim=1),
        )
    return out


def updates(adapter: Adapter) -> Factors:
    """(A, s B) per module: factors whose product is the adapter's own dW."""
    return {m: (a.float(), adapter.scaling * b.float()) for m, (a, b) in adapter.factors.items()}


def factor_outer_step(start, shards, w, lr, momentum, state) -> tuple[Factors, Factors | None, dict]:
    """The outer step on the LoRA parameters themselves (A and B, DiLoCo's own setting): the next global
    keeps the shards' coordinates, so each shard's AdamW moments still fit it. Its error against the
    exact mean of the updates (the cross terms of the shards' changes) is measured and recorded."""
    new, velocity = {}, {}
    for module, (a0, b0) in start.factors.items():
        a0, b0 = a0.float(), b0.float()
        delta_a = sum(wi * s.factors[module][0].float() for s, wi in zip(shards, w)) - a0
        delta_b = sum(wi * s.factors[module][1].float() for s, wi in zip(shards, w)) - b0
        if momentum:
            v_a, v_b = state[module] if state else (torch.zeros_like(a0), torch.zeros_like(b0))
            v_a, v_b = momentum * v_a + delta_a, momentum * v_b + delta_b
            velocity[module] = (v_a, v_b)
            delta_a, delta_b = delta_a + momentum * v_a, delta_b + momentum * v_b
        new[module] = (a0 + lr * delta_a, b0 + lr * delta_b)
    exact = concat_factors(shards, w)
    approx = {m: (a, start.scaling * b) for m, (a, b) in new.items()}
    record = {"space": "factors", "factor_error": relative_errors(approx, exact)["overall"], "svd_error": 0.0}
    return new, velocity or None, record


def outer_step(
    start: Adapter,
    shards: list[Adapter],
    weights: list[float] | None = None,
    lr: float = 1.0,
    momentum: float = 0.0,
    state: Factors | None = None,
    state_rank: int | None = None,
    space: str = "factors",
) -> tuple[Factors, Factors | None, dict]:
    """(the next global's factors as (A, B) with B scaled for the shards' scaling, the new velocity, a record).

    space="svd": exact in dW space, back to rank r by SVD (the module docstring); space="factors": on A
    and B themselves (factor_outer_step), which keeps the shards' coordinates for their optimizer state."""
    if not shards:
        raise ValueError("a round needs at least one shard's adapter")
    if space not in OUTER_SPACES:
        raise ValueError(f"outer step space {space!r}: use one of {', '.join(OUTER_SPACES)}")
    total = sum(weights) if weights else len(shards)
    w = [x / total for x in weights] if weights else [1.0 / len(shards)] * len(shards)
    record = {"shards": [s.name for s in shards], "weights": w, "lr": lr, "momentum": momentum}
    if space == "factors":
        new, velocity, factor_record = factor_outer_step(start, shards, w, lr, momentum, state)
        return new, velocity, {**record, **factor_record}
    record["space"] = "svd"
    g = updates(start)
    mean = concat_factors(shards, w)  # sum_i w_i s_i B_i A_i, exact
    delta = _concat(mean, _scale(g, -1.0))  # the round's change, exact
    rank_delta = next(iter(delta.values()))[0].shape[0]
    if momentum:
        velocity = _concat(_scale(state, momentum), delta) if state else delta
        keep = state_rank or rank_delta
        if next(iter(velocity.values()))[0].shape[0] > keep:
            truncated, _ = svd_factors(velocity, keep)
            record["state_error"] = relative_errors(truncated, velocity)["overall"]
            velocity = truncated
        step = _concat(delta, _scale(velocity, momentum))
    else:
        velocity, step = None, delta
    exact_next = _concat(g, _scale(step, lr))  # dW_G + lr * step, exact
    rank = start.rank
    next_factors, stats = svd_factors(exact_next, rank)
    record["svd_error"] = relative_errors(next_factors, exact_next)["overall"]
    next_factors = rescale_like(next_factors, start.factors)
    record["retained_energy_min"] = min(s["retained_energy"] for s in stats.values())
    if lr == 1.0 and not momentum:  # what averaging the factors (space="factors") would have erred, for the record
        record["factor_average_error"] = factor_outer_step(start, shards, w, 1.0, 0.0, None)[2]["factor_error"]
    s = start.scaling
    return {m: (a, b / s) for m, (a, b) in next_factors.items()}, velocity, record


def rescale_like(factors: Factors, like: Factors) -> Factors:
    """The same B @ A with each A's rows at the RMS row norm of `like`'s A (the round's start).

    svd_factors splits sqrt(S) between B and A; after a round dW is small, so both factors would
    be small, and LoRA's gradients (dL/dB ~ A, dL/dA ~ B) would then train the next round far
    slower than the first: measured in scripts/bench_rounds.py, 0.187 eval loss against 0.095
    for the one-shot merge. Keeping A at its init's scale (B takes the rest) trains like round 1."""
    out = {}
    for module, (a, b) in factors.items():
        target = like[module][0].float().norm() / max(like[module][0].shape[0], 1) ** 0.5
        norms = a.norm(dim=1)
        keep = norms > 0
        scale = torch.where(keep, target / norms.clamp_min(1e-30), torch.zeros_like(norms))
        out[module] = (a * scale[:, None], torch.where(keep[None, :], b / scale.clamp_min(1e-30)[None, :], 0.0))
    return out


def save_global(factors: Factors, start: Adapter, out: str | Path) -> None:
    """The next round's global adapter: the shards' own PEFT config (rank, alpha), B already divided by s."""
    out = Path(out)
    save_lora(factors, start.config, out, torch.float32)
    # save_lora writes alpha = rank (scaling 1); the round's global keeps the shards' scaling instead.
    config = read_json(out / ADAPTER_CONFIG)
    config.update(r=start.config["r"], lora_alpha=start.config["lora_alpha"],
                  use_rslora=bool(start.config.get("use_rslora")))  # fmt: skip
    write_json_atomic(out / ADAPTER_CONFIG, config)


def save_outer_state(state: Factors | None, path: str | Path) -> None:
    tensors = {}
    for module, (a, b) in (state or {}).items():
        tensors[f"{module}.v_A"], tensors[f"{module}.v_B"] = a.contiguous(), b.contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})


def load_outer_state(path: str | Path) -> Factors | None:
    path = Path(path)
    if not path.is_file():
        return None
    tensors = load_file(str(path))
    modules = sorted({k[: -len(".v_A")] for k in tensors if k.endswith(".v_A")})
    return {m: (tensors[f"{m}.v_A"], tensors[f"{m}.v_B"]) for m in modules} or None


# ---- a shard's side of a round: stop at its end, start the next from the global ----


class RoundBoundary(TrainerCallback):
    """Ends a `train()` call with a checkpoint at every multiple of `round_steps`: a round's end.

    The Trainer keeps `max_steps` for the whole shard, so the learning-rate schedule runs over all
    rounds; the next round resumes this checkpoint (inner optimizer state, data position, RNG)."""

    def __init__(self, round_steps: int, round_: int | None = None):
        self.round_steps, self.round = round_steps, round_

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.round_steps == 0:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        # Every checkpoint records its fleet round: after a skip (a shard back from a long absence starts
        # from the newest global) the round is no longer its step / H, and a resume on any account must know.
        if self.round is not None and state.is_world_process_zero:
            write_json_atomic(
                Path(args.output_dir) / checkpoint_name(state.global_step) / ROUND_MARK, {"round": self.round}
            )


def checkpoint_round(checkpoint: str | Path, round_steps: int) -> int:
    """The fleet round a checkpoint belongs to (the round it ends, at a multiple of H): its ROUND_MARK,
    else (a shard that never skipped) its step / H rounded up."""
    mark = Path(checkpoint) / ROUND_MARK
    if mark.is_file():
        return int(read_json(mark)["round"])
    return -(-checkpoint_step(checkpoint) // round_steps)


class RoundStart(TrainerCallback):
    """When a round's `train()` begins (after the Trainer restored the shard's checkpoint), set the
    LoRA weights to the round's global adapter, in place, so the optimizer keeps its state for them
    (DiLoCo's way, and kit's default); `reset_optimizer` drops that state instead
    (train.round_reset_optimizer: better only at too low a learning rate, BENCHMARKS.md "Rounds").

    With `round_steps`, only at a round's first step: a shard resumed mid-round (its session ended
    there) continues its own checkpoint's weights, exactly as an uninterrupted round would. With
    `save_init`, the very first start (step 0) saves the LoRA init there: round 0's global."""

    def __init__(
        self,
        global_dir: str | Path | None,
        reset_optimizer: bool = False,
        round_steps: int | None = None,
        save_init: str | Path | None = None,
    ):
        self.global_dir = Path(global_dir) if global_dir else None
        self.reset_optimizer, self.round_steps = reset_optimizer, round_steps
        self.save_init = Path(save_init) if save_init else None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.save_init is not None and state.global_step == 0:
            model.save_pretrained(self.save_init)
        if self.round_steps and state.global_step % self.round_steps:
            return  # mid-round: the checkpoint's own weights and optimizer state
        if self.global_dir is not None:
            load_global_into(model, self.global_dir)
        if self.reset_optimizer and optimizer is not None:
            optimizer.state.clear()


def load_global_into(model, global_dir: str | Path) -> None:
    """Copy a global adapter's LoRA weights into a PeftModel's own parameters (their identity kept)."""
    from peft import set_peft_model_state_dict

    tensors = load_file(str(Path(global_dir) / ADAPTER_WEIGHTS))
    result = set_peft_model_state_dict(model, tensors)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise ValueError(f"{global_dir}: {len(missing)} LoRA weights match no module of the model ({missing[:2]}...)")
