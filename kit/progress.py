"""What a person watching one shard train sees: a live progress bar, and the loss curve at the end.

    Trainer(..., callbacks=[ProgressBar(seconds_left=budget.seconds_left)])   # seconds_left is optional
    # -> a bar with loss, tokens/s and ETA while training; OUTPUT/shard-II/loss.png when training ends
    save_loss_plot(loss_history(trainer.state.log_history), "loss.png", title="shard 3")
    show_loss_plot(metrics)   # in a notebook: display shard-II/loss.png if it exists

matplotlib and ipywidgets are optional (kit/display.py): without them the plot
is skipped and the bar is text, each with one line that says so.

The bar is a tqdm widget in an interactive notebook (Jupyter, Colab, VS Code, an
interactive Kaggle session) and plain text everywhere else, papermill included:
a widget in a headless run is saved as a dead `HBox(...)` placeholder, text
is saved as the log it is. KIT_PROGRESS=widget|text|off overrides the guess.

The loss history in status.json (`loss_history`, a list of [step, loss]) comes
from the same `state.log_history` that a resumed Trainer restores from its
checkpoint, so the curve survives a restart on another machine.

Tested by tests/test_progress.py (`.venv/bin/python -m pytest -q tests/test_progress.py`, ~20 s, no network).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from kit.display import format_duration, frontend, optional_package, save_loss_plot, show_png
from kit.layout import LOSS_PLOT

# status.json is pushed with every checkpoint: a few hundred points draw the same curve as ten thousand.
MAX_HISTORY_POINTS = 400


def loss_history(log_history: list[dict], max_points: int = MAX_HISTORY_POINTS) -> list[list]:
    """[[step, loss], ...] from the Trainer's log_history, thinned evenly to at most max_points (last kept)."""
    points = [[int(e["step"]), round(float(e["loss"]), 5)] for e in log_history if "loss" in e and "step" in e]
    if len(points) <= max_points:
        return points
    stride = -(-len(points) // max_points)  # ceil: never more than max_points
    thinned = points[::stride]
    if thinned[-1] != points[-1]:
        thinned[-1] = points[-1]  # the latest loss is the one people look for
    return thinned


class RunRate:
    """Tokens/s and ETA since training (re)started: what status.json and the bar both show.

    Counted from the step the Trainer resumed at, so a resumed run's rate is its own, not
    diluted by the steps an earlier session did."""

    def __init__(self):
        self.t0, self.step0, self.tokens0 = None, 0, 0

    def start(self, state) -> None:
        self.t0, self.step0, self.tokens0 = time.monotonic(), state.global_step, state.num_input_tokens_seen

    @property
    def started(self) -> bool:
        return self.t0 is not None

    def elapsed(self) -> float:
        return max(time.monotonic() - self.t0, 1e-9)

    def tokens_per_s(self, state) -> float:
        return (state.num_input_tokens_seen - self.tokens0) / self.elapsed()

    def seconds_per_step(self, state) -> float | None:
        done = state.global_step - self.step0
        return self.elapsed() / done if done > 0 else None

    def eta_s(self, state) -> float | None:
        per_step = self.seconds_per_step(state)
        return None if per_step is None else per_step * (state.max_steps - state.global_step)


class ProgressBar(TrainerCallback):
    """A tqdm bar over steps with loss, tokens/s and ETA; writes loss.png into the run dir at the end.

    `seconds_left`, when given, returns the time left in the session budget: the
    postfix then says where the budget will stop training if that comes first.
    The Trainer's own bar stays off (training_arguments sets disable_tqdm=True):
    this one knows about resumed steps, tokens and the budget.
    """

    def __init__(self, seconds_left=None, plot: bool = True, file=None):
        self.seconds_left = seconds_left
        self.plot = plot
        self.file = file
        self.bar = None
        self.rate = RunRate()
        self._loss = None

    def _make_bar(self, total: int, initial: int):
        mode = frontend()
        if mode == "off":
            return None
        if mode == "widget" and not optional_package("ipywidgets", "the progress widget (a text bar instead)"):
            mode = "text"
        if mode == "widget":
            from tqdm.notebook import tqdm
        else:
            from tqdm import tqdm
        # Text mode redraws at most every 5 s: under papermill every redraw is kept in the saved notebook.
        return tqdm(
            total=total,
            initial=initial,
            unit="step",
            desc="train",
            dynamic_ncols=True,
            mininterval=0.1 if mode == "widget" else 5.0,
            file=self.file or sys.stderr,
        )

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self.rate.start(state)
        self.bar = self._make_bar(state.max_steps, state.global_step)

    def postfix(self, state) -> dict:
        """Loss, tokens/s and ETA (to max_steps, or to the budget's end when that comes first)."""
        fields = {}
        if self._loss is not None:
            fields["loss"] = f"{self._loss:.4f}"
        fields["tok/s"] = f"{self.rate.tokens_per_s(state):.0f}"
        per_step, eta = self.rate.seconds_per_step(state), self.rate.eta_s(state)
        if per_step is not None:
            fields["eta"] = format_duration(eta)
            left = self.seconds_left() if self.seconds_left is not None else None
            if left is not None and left < eta:
                # The budget ends first: say where, so nobody waits for a step the session never reaches.
                fields["budget"] = (
                    f"stops ~step {state.global_step + int(max(left, 0) / per_step)} in {format_duration(left)}"
                )
        return fields

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._loss = float(logs["loss"])
        if self.bar is not None:
            self.bar.set_postfix(self.postfix(state), refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.close()
            self.bar = None
        if self.plot and state.is_world_process_zero:
            history = loss_history(state.log_history)
            if history and optional_package("matplotlib", f"{LOSS_PLOT} (the loss curve)"):
                run_dir = Path(args.output_dir)
                # In the run dir before push_final runs: kit/sync.py pushes it beside the adapter.
                save_loss_plot(history, run_dir / LOSS_PLOT, title=f"{run_dir.name}: training loss")


def show_loss_plot(metrics: dict) -> Path | None:
    """Display the shard's loss.png (beside its adapter dir) if this machine has it; return its path."""
    path = Path(metrics.get("adapter", "")).parent / LOSS_PLOT
    if not metrics.get("adapter") or not path.is_file():
        print("no loss plot on this machine (the shard was trained elsewhere, or logged no loss)")
        return None
    show_png(path.read_bytes())
    return path
