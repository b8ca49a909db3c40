# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Watch the fleet
# Set `run` to the run's repo (`hf://USER/REPO`) or folder (the `output` every `train_shard` used), then
# **Run all**. The table shows every shard's state, step, loss, tokens/s, ETA, last update and platform,
# with the fleet's totals; a shard silent for `stale_after_min` minutes is marked **stale**, with the exact
# notebook to open to restart it and the step it resumes from. In Jupyter or Colab the table refreshes
# itself every `refresh_every_s` seconds; headless (papermill) it is drawn once. Terminal:
#
#     python -m kit status hf://me/run --data hf://datasets/me/data [--json]
#
# A private repo needs a token to read: on Colab, the `HF_TOKEN` secret; elsewhere `export HF_TOKEN=…`.

# %% tags=["parameters"]
run = "runs/my-run"  # @param {type:"string"}
data = ""  # @param {type:"string"}
stale_after_min = 15  # @param {type:"number"}
refresh_every_s = 60  # @param {type:"integer"}
kit_source = "git+https://github.com/kit-project/kit.git"  # @param {type:"string"}

# %%
# Setup: install kit (and requirements.txt when it sits beside this notebook) unless kit is
# already importable. The runtime's torch is pinned with a constraint so pip never replaces it.
import importlib.util, pathlib, subprocess, sys  # noqa: E401

if importlib.util.find_spec("kit") is None:
    import torch

    pathlib.Path("/tmp/kit-constraints.txt").write_text(f"torch=={torch.__version__}\n")
    src = str(pathlib.Path(kit_source).resolve()) if pathlib.Path(kit_source).exists() else kit_source
    reqs = ["-r", "requirements.txt"] if pathlib.Path("requirements.txt").exists() else []
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "-c", "/tmp/kit-constraints.txt", src, *reqs])

# %%
from kit.status import live_view, show_loss_curves

view = live_view(run, every=refresh_every_s, data=data or None, stale_after=stale_after_min * 60)

# %% [markdown]
# Every shard's training loss against step (from the `loss_history` in each `status.json`).

# %%
show_loss_curves(view.fleet);

# %% [markdown]
# To stop the table refreshing: `view.stop()`.
