"""What a person watching one shard train sees: a live progress bar, and the loss curve at the end.

    Trainer(..., callbacks=[ProgressBar(seconds_left=budget.seconds_left)])   # seconds_left is optional
    # -> a bar with loss, tokens/s and ETA while training; OUTPUT/shard-II/loss.png when training ends
    save_loss_plot(loss_history(trainer.state.log_history), "loss.png", title="shard 3")
    show_loss_plot(metrics)   # in a notebook: display shard-II/loss.png if it exists

matplotlib and ipywidgets are optional (not among kit's dependencies): without
them the plot is skipped and the bar is text, each with one line that says so.

The bar is a tqdm widget in an interactive notebook (Jupyter, Colab, VS Code, an
interactive Kaggle session) and plain text everywhere else, papermill included:
a widget in a headless run is saved as a dead `HBox(...)` placeholder, text
is saved as the log it is. KIT_PROGRESS=widget|text|off overrides the guess.

Plots are drawn on a bare `matplotlib.figure.Figure` with the Agg canvas, never
through pyplot: no global figure state, no GUI backend, safe from any thread.

The loss history in status.json (`loss_history`, a list of [step, loss]) comes
from the same `state.log_history` that a resumed Trainer restores from its
checkpoint, so the curve survives a restart on another machine.

Tested by tests/test_progress.py (`.venv/bin/python -m pytest -q tests/test_progress.py`, ~20 s, no network).
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import time
from pathlib import Path

from transformers import TrainerCallback

from kit.files import write_bytes_atomic

LOSS_PLOT = "loss.png"
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


def format_duration(seconds: float | None) -> str:
    """3725 -> '1h02m', 125 -> '2m05s', None -> '-'."""
    if seconds is None:
        return "-"
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def optional_package(module: str, nicety: str, package: str | None = None) -> bool:
    """True when `module` imports; else print one line saying which nicety is skipped and what gives it.

    Plots and widgets are niceties: a runtime without matplotlib or ipywidgets (kit's own
    dependencies leave both out) loses the picture, never the run."""
    if importlib.util.find_spec(module) is not None:
        return True
    print(f"{nicety} skipped: {module} is not installed (`pip install {package or module}` gives it)", flush=True)
    return False


def frontend() -> str:
    """'widget' in an interactive notebook, 'text' elsewhere (papermill, terminals), or KIT_PROGRESS's value."""
    forced = os.environ.get("KIT_PROGRESS", "").strip().lower()
    if forced in ("widget", "text", "off"):
        return forced
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is None or "IPKernelApp" not in shell.config:
        return "text"
    # A kernel alone says nothing: papermill runs one too, with nobody to draw widgets. These are set only
    # where a person's front end started the kernel (jupyter_server's session manager, VS Code, Colab, Kaggle).
    interactive = (
        "JPY_SESSION_NAME" in os.environ
        or "VSCODE_PID" in os.environ
        or "google.colab" in sys.modules
        or os.environ.get("KAGGLE_KERNEL_RUN_TYPE") == "Interactive"
    )
    return "widget" if interactive else "text"


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
        self._t0 = 0.0
        self._step0 = 0
        self._tokens0 = 0
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
        return tqdm(total=total, initial=initial, unit="step", desc="train", dynamic_ncols=True,
                    mininterval=0.1 if mode == "widget" else 5.0, file=self.file or sys.stderr)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        self._t0 = time.monotonic()
        self._step0 = state.global_step
        self._tokens0 = state.num_input_tokens_seen
        self.bar = self._make_bar(state.max_steps, state.global_step)

    def postfix(self, state) -> dict:
        """Loss, tokens/s and ETA (to max_steps, or to the budget's end when that comes first)."""
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        done = state.global_step - self._step0
        fields = {}
        if self._loss is not None:
            fields["loss"] = f"{self._loss:.4f}"
        fields["tok/s"] = f"{(state.num_input_tokens_seen - self._tokens0) / elapsed:.0f}"
        if done > 0:
            per_step = elapsed / done
            eta = per_step * (state.max_steps - state.global_step)
            fields["eta"] = format_duration(eta)
            left = self.seconds_left() if self.seconds_left is not None else None
            if left is not None and left < eta:
                # The budget ends first: say where, so nobody waits for a step the session never reaches.
                fields["budget"] = f"stops ~step {state.global_step + int(max(left, 0) / per_step)} in {format_duration(left)}"
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


def plot_loss_curves(curves: dict[str, list], title: str = "training loss"):
    """One line per name: {name: [[step, loss], ...]} -> a matplotlib Figure (not attached to pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    for name, points in curves.items():
        if points:
            steps, losses = zip(*points)
            ax.plot(steps, losses, marker="." if len(points) < 30 else None, label=name)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers, even on a 4-step run
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def save_loss_plot(history: list, path: str | Path, title: str = "training loss") -> Path:
    """Write the curve as a PNG, atomically (a reader never sees half an image)."""
    path = Path(path)
    write_bytes_atomic(path, figure_png(plot_loss_curves({"loss": history}, title)))
    return path


def show_png(data: bytes) -> None:
    """Display PNG bytes in a notebook; outside IPython say where nothing was shown."""
    try:
        from IPython.display import Image, display
    except ImportError:
        print(f"(a {len(data)}-byte PNG; IPython is not installed to show it)")
        return
    display(Image(data=data, format="png"))


def show_loss_plot(metrics: dict) -> Path | None:
    """Display the shard's loss.png (beside its adapter dir) if this machine has it; return its path."""
    path = Path(metrics.get("adapter", "")).parent / LOSS_PLOT
    if not metrics.get("adapter") or not path.is_file():
        print("no loss plot on this machine (the shard was trained elsewhere, or logged no loss)")
        return None
    show_png(path.read_bytes())
    return path
