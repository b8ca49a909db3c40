"""The session's time budget: measure the step time, say whether the shard fits, stop cleanly before the deadline.

    budget = SessionBudget(seconds=4 * 3600, elapsed_s=time_since_start, status=status)
    Trainer(..., callbacks=[budget, ...])      # first in the list: see on_save
    trainer.train(); budget.stopped            # True -> checkpoint saved, state stopped_for_time

    python -m kit train --preset colab-t4 ... --time-limit 14400     # or train.session_hours=4
    python -m kit plan --preset kaggle-t4x2 --time-limit 43200      # the estimate, no training

After `warmup_steps` steps (the first ones pay for allocation and kernel
selection, so they are not counted) the budget prints its plan once: seconds
per step, steps that still fit, ETA, on track or not. From then on, before
every step it checks that one more step, one save, the final eval and push
(FinalReserve: estimated from the eval split's size and the measured speeds)
and a safety margin still fit before the deadline; when they don't, it sets the Trainer's own
`control.should_save` and `control.should_training_stop`, so the Trainer writes
a complete checkpoint at this step and returns. Nothing is lost but the time
left over, and the next session resumes from that checkpoint (and, when only
the final eval did not fit, trains its last steps and evaluates).

Under DDP every rank must stop at the same step (or the others hang in the next
all-reduce): the stop flag is all-reduced (max) across ranks before it is acted on.

The clock is injectable so tests are deterministic: tests/test_budget.py.
"""

from __future__ import annotations

import math
import time

from transformers import TrainerCallback

from kit.display import format_duration
from kit.distributed import gpu_count
from kit.layout import checkpoint_name

SAFETY_S = 60.0
"""Kept free at the deadline: a log line, the status write, a slow filesystem."""
CLOCK = time.monotonic
"""The clock a budget reads when none is given; tests swap it for a fake one."""
SAVE_GUESS_S = 30.0
"""Assumed save time until the first save is measured (a LoRA checkpoint is small; the optimizer state dominates)."""
FORWARD_SHARE = 0.5
"""An eval forward's time per token against a training step's (about 1/3: no backward; 1/2 to err on the safe side)."""
RESERVE_SAFETY = 1.25
"""The final eval's estimate is scaled by this: running out of time in it costs the whole eval."""


class FinalReserve:
    """The seconds a run needs after its last step: the final eval (loss pass + greedy generation) and its push.

    Estimated from the eval split's size and measured speeds: generation by `probe(model)` when
    training begins (seconds per generated token of one eval batch: kit/train.py's generation_probe),
    the loss pass from the training steps' tokens/s (FORWARD_SHARE of a step per token), the push
    from `push_s` (the measured save, a checkpoint weighs more than the adapter)."""

    def __init__(self, eval_tokens: int, generate_batches: int, max_new_tokens: int, probe=None):
        self.eval_tokens, self.generate_batches, self.max_new_tokens = eval_tokens, generate_batches, max_new_tokens
        self.probe = probe
        self.token_step_s: float | None = None  # one decode step of one eval batch, measured

    def measure(self, model) -> None:
        if self.probe is not None and self.token_step_s is None:
            self.token_step_s = self.probe(model)

    def parts(self, train_tokens_per_s: float | None, push_s: float) -> dict:
        loss_s = self.eval_tokens / train_tokens_per_s * FORWARD_SHARE if train_tokens_per_s else 0.0
        generate_s = self.generate_batches * self.max_new_tokens * (self.token_step_s or 0.0)
        return {
            "eval_loss_s": round(RESERVE_SAFETY * loss_s, 1),
            "generate_s": round(RESERVE_SAFETY * generate_s, 1),
            "push_s": round(push_s, 1),
        }

    def seconds(self, train_tokens_per_s: float | None, push_s: float) -> float:
        return sum(self.parts(train_tokens_per_s, push_s).values())


class SessionBudget(TrainerCallback):
    """Stops training with a checkpoint before `started + seconds` (see the module docstring)."""

    def __init__(
        self,
        seconds: float,
        elapsed_s: float = 0.0,
        clock=None,
        warmup_steps: int = 3,
        safety_s: float = SAFETY_S,
        save_guess_s: float = SAVE_GUESS_S,
        status=None,
        verbose: bool = True,
        reserve: FinalReserve | None = None,
    ):
        """`elapsed_s`: session time already used before this budget was made (setup, data, tokenizing);
        `reserve`: what the final eval and push need after the last step (kept free of steps)."""
        self.seconds, self.clock = float(seconds), clock or CLOCK
        self.started = self.clock() - elapsed_s
        self.deadline = self.started + self.seconds
        self.warmup_steps, self.safety_s, self.save_s = warmup_steps, safety_s, save_guess_s
        self.status, self.verbose, self.reserve = status, verbose, reserve
        self.stopped = False
        self._tokens: list[int] = []  # tokens of each step, beside _durations
        self._tokens_seen: int | None = None
        self.estimate: dict | None = None  # the plan printed after warm-up
        self._durations: list[float] = []
        self._last_end: float | None = None
        self._saved_since_last = 0.0
        self._begin = None

    # -- measurements ------------------------------------------------------------------
    def step_s(self) -> float | None:
        """Seconds per step: the mean after warm-up, or (until then) the slowest seen, to err on the safe side."""
        if not self._durations:
            return None
        steady = self._durations[self.warmup_steps :]
        return sum(steady) / len(steady) if steady else max(self._durations)

    def tokens_per_s(self) -> float | None:
        """Training tokens per second after warm-up (None until a step is measured)."""
        steady = slice(self.warmup_steps, None) if len(self._durations) > self.warmup_steps else slice(None)
        seconds, tokens = sum(self._durations[steady]), sum(self._tokens[steady])
        return tokens / seconds if seconds > 0 and tokens > 0 else None

    def reserve_s(self) -> float:
        """The final eval and push, kept free at the end (0 without a reserve)."""
        return self.reserve.seconds(self.tokens_per_s(), self.save_s) if self.reserve else 0.0

    def margin_s(self) -> float:
        return (self.step_s() or 0.0) + self.save_s + self.safety_s + self.reserve_s()

    def seconds_left(self) -> float:
        """Seconds until the stop: the session's end less one step, one save, the safety and the reserve."""
        return self.deadline - self.clock() - self.margin_s()

    def stop_waiting(self, what: str, step: int) -> None:
        """The session ends while the shard waits (a round's global: kit/round_store.py), not training:
        stopped for time like a stop between steps; the checkpoint at `step` is already saved."""
        self.stopped = True
        if self.verbose:
            print(
                f"budget: {max(self.deadline - self.clock(), 0):.0f} s left of the session and still waiting for "
                f"{what}: stopping at {checkpoint_name(step)} (Run all again in a new session to continue)",
                flush=True,
            )

    def report(self) -> dict:
        """What status.json and the metrics record: the plan made after warm-up and what actually happened."""
        now = self.clock()
        return {
            "session_s": round(self.seconds, 1),
            "elapsed_s": round(now - self.started, 1),
            "train_s": round(now - self._begin, 1) if self._begin is not None else None,
            "step_s": _round(self.step_s()),
            "save_s": round(self.save_s, 2),
            "margin_s": round(self.margin_s(), 1),
            "final_reserve": (
                {**self.reserve.parts(self.tokens_per_s(), self.save_s), "total_s": round(self.reserve_s(), 1)}
                if self.reserve
                else None
            ),
            "plan": self.estimate,
            "stopped_for_time": self.stopped,
        }

    # -- callback ----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.reserve is not None and model is not None:
            self.reserve.measure(model)  # before the clock starts: the probe is no step
        self._begin = self._last_end = self.clock()
        self._tokens_seen = getattr(state, "num_input_tokens_seen", 0) or 0

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        # The interval since the previous step's end, minus any save in between: one step's time.
        self._durations.append(max(now - self._last_end - self._saved_since_last, 0.0))
        seen = getattr(state, "num_input_tokens_seen", 0) or 0
        self._tokens.append(max(seen - (self._tokens_seen or 0), 0))
        self._tokens_seen = seen
        self._last_end, self._saved_since_last = now, 0.0
        left = state.max_steps - state.global_step
        if self.estimate is None and len(self._durations) > self.warmup_steps and left > 0:
            self._plan(state, now, left, state.is_world_process_zero)
        stop = left > 0 and self.deadline - now < self.margin_s()
        if _any_rank(stop, args):
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True
            if self.verbose and state.is_world_process_zero:
                final = f" + the final eval and push (~{self.reserve_s():.0f} s)" if self.reserve else ""
                print(
                    f"budget: {self.deadline - now:.0f} s left of the session, one step + one save{final} + safety "
                    f"need {self.margin_s():.0f} s: saving {checkpoint_name(state.global_step)} and stopping "
                    f"({left} steps left; Run all again in a new session to continue)",
                    flush=True,
                )
        return control

    def on_save(self, args, state, control, **kwargs):
        now = self.clock()
        self._saved_since_last = now - self._last_end
        self.save_s = max(self._saved_since_last, 1e-3)  # the newest save is the best guess for the next
        if self.stopped and self.status is not None and state.is_world_process_zero:
            # Before the Hub pusher's on_save (this callback goes first), so the pushed status says why it stopped.
            self.status.update(state="stopped_for_time", step=state.global_step, budget=self.report())

    def _plan(self, state, now: float, left: int, main: bool) -> None:
        step_s = self.step_s()
        saves_left = left // max(state.save_steps or left, 1)
        eta = left * step_s + saves_left * self.save_s
        fits = max(math.floor((self.deadline - now - self.margin_s()) / step_s), 0) if step_s > 0 else left
        self.estimate = {
            "at_step": state.global_step,
            "step_s": _round(step_s),
            "steps_left": left,
            "steps_fit": min(fits, left),
            "eta_s": round(eta, 1),
            "session_left_s": round(self.deadline - now, 1),
            "on_track": fits >= left,
            "planned_train_s": round(now - self._begin + min(eta, self.deadline - now - self.margin_s()), 1),
        }
        if main and self.verbose:
            e = self.estimate
            verdict = (
                "on track"
                if e["on_track"]
                else f"NOT on track: about {e['steps_fit']} of {left} steps fit; it will save and stop near step "
                f"{state.global_step + e['steps_fit']}, and the next session continues"
            )
            print(
                f"budget: {step_s:.2f} s/step after {self.warmup_steps} warm-up steps; {left} steps left need "
                f"~{format_duration(eta)}, {format_duration(self.deadline - now)} of the session left "
                f"(margin {self.margin_s():.0f} s): "
                f"{verdict}",
                flush=True,
            )
        if main and self.status is not None:
            self.status.update(budget=self.report())


def _any_rank(flag: bool, args) -> bool:
    """True if any rank says stop (DDP ranks must agree or the next collective hangs)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=args.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def describe_plan(cfg, processes: int | None = None) -> str:
    """`kit plan`'s estimate, before any step is measured: the batch arithmetic and the slowest
    step time with which max_steps still fits the session (the run measures the real one after warm-up)."""
    t = cfg.train
    procs = processes or max(gpu_count(), 1)
    global_batch = t.micro_batch_size * t.grad_accum * procs
    lines = [
        f"global batch: micro-batch {t.micro_batch_size} x accumulation {t.grad_accum} x {procs} process(es) "
        f"= {global_batch} examples/step, at most {global_batch * cfg.data.max_length:,} tokens/step",
        f"checkpoint every {t.save_steps} steps: at most {t.save_steps} steps lost to a crash, "
        "none to the session limit",
    ]
    if t.session_hours <= 0:
        lines.append(f"session: no time limit; {t.max_steps} steps")
        return "\n".join(lines)
    session_s = t.session_hours * 3600
    saves = t.max_steps // t.save_steps
    usable = session_s - SAFETY_S - SAVE_GUESS_S * (saves + 1)  # every save, plus the stop's own
    per_step = max(usable / t.max_steps, 0.0)
    lines.append(
        f"session: {format_duration(session_s)}; {t.max_steps} steps finish in one session if a step takes "
        f"<= {per_step:.2f} s "
        f"(assuming {SAVE_GUESS_S:.0f} s per save, {SAFETY_S:.0f} s safety); the run measures its step time after "
        "warm-up, prints steps that fit and ETA, and otherwise saves and stops before the limit "
        "(state stopped_for_time)"
    )
    return "\n".join(lines)


def _round(x):
    return None if x is None else round(x, 3)
