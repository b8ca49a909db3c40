"""Which runtime this process is on (Colab, Kaggle, elsewhere) and whether a person is watching it.

    runtime_name()          # "colab" | "kaggle" | "local": recorded in status.json, shown by `kit status`
    interactive_notebook()  # True in a notebook a person has open (Jupyter, VS Code, Colab, interactive Kaggle)

Read from the environment each platform sets, never from a network call.
Needs nothing of kit. (kit/bootstrap.py reads the platforms' secrets itself: the
install cell runs before kit is installed.)
"""

from __future__ import annotations

import os
import sys


def is_colab() -> bool:
    return "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ or "google.colab" in sys.modules


def is_kaggle() -> bool:
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or "KAGGLE_URL_BASE" in os.environ


def runtime_name() -> str:
    """colab, kaggle or local: recorded in status.json so a fleet view shows where each shard runs."""
    if is_colab():
        return "colab"
    if is_kaggle():
        return "kaggle"
    return "local"


def interactive_notebook() -> bool:
    """A person's front end started this kernel. A kernel alone says nothing: papermill runs one too, with
    nobody to draw widgets; these are set only by jupyter_server's session manager, VS Code, Colab, and
    Kaggle's interactive editor (a committed Kaggle run is "Batch")."""
    return (
        "JPY_SESSION_NAME" in os.environ
        or "VSCODE_PID" in os.environ
        or "google.colab" in sys.modules
        or os.environ.get("KAGGLE_KERNEL_RUN_TYPE") == "Interactive"
    )
