"""What a person sees, without training anything: durations, plots, PNGs, and widget-or-text.

    format_duration(3725)                        # "1h02m"
    optional_package("matplotlib", "the plot")   # False (and one line why) when it isn't installed
    frontend()                                   # "widget" in a notebook a person has open, else "text"
    save_loss_plot([[1, 2.3], [2, 1.9]], "loss.png")

matplotlib and ipywidgets are optional (not among kit's dependencies): without
them a plot is skipped and a bar is text, each with one line that says so.
Plots are drawn on a bare `matplotlib.figure.Figure` with the Agg canvas, never
through pyplot: no global figure state, no GUI backend, safe from any thread.

Imports neither torch nor transformers, so `kit status` stays light; the
training-time pieces (the progress bar, the loss history) are kit/progress.py.
"""

from __future__ import annotations

import importlib.util
import io
import os
from pathlib import Path

from kit.files import write_bytes_atomic
from kit.runtime import interactive_notebook


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
    return "widget" if interactive_notebook() else "text"


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
