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
# # Train one shard
# Set `shard_index` (and the paths) below, then **Run all**. Pressing Run all again after a
# disconnect resumes from the newest complete checkpoint. Headless:
#
#     papermill notebooks/train_shard.ipynb out/shard-1.ipynb -p shard_index 1 -p preset colab-t4
#
# `output` can be a folder or a Hub repo, `hf://USER/REPO` (created private). With a Hub repo every
# checkpoint is pushed to `shard-II/` in the background while training goes on, and Run all on any
# machine or account with write access continues from the latest complete one; the finished adapter
# lands in `shard-II/adapter/` with a model card. `data` can be `hf://datasets/USER/REPO` (made by
# `python -m kit split … --push-to`); only this shard and the eval split are downloaded.
# The token is never a parameter: on Colab, click the key icon and add a secret `HF_TOKEN` (notebook
# access on); on Kaggle, Add-ons → Secrets → `HF_TOKEN`; elsewhere, `export HF_TOKEN=…`.
#
# Respect each platform's terms: Colab's FAQ, for one, forbids using several accounts to get around its limits.

# %% tags=["parameters"]
shard_index = 0  # @param {type:"integer"}
preset = "colab-t4"  # @param ["colab-t4", "kaggle-t4x2", "kaggle-p100", "a100-40g", "h100-80g", "rtx4090", "cpu-demo", "cpu-tiny"] {allow-input: true}
data = "shards"  # @param {type:"string"}
output = "runs/my-run"  # @param {type:"string"}
overrides = ""  # @param {type:"string"}
kit_source = "git+https://github.com/kit-project/kit.git"  # @param {type:"string"}
# session_hours: 0 means the preset's (Colab 4 h, Kaggle 11.5 h); the run saves and stops cleanly before it.
session_hours = 0.0  # @param {type:"number"}

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
from kit.config import load_config, parse_overrides
from kit.train import train_shard

run_overrides = parse_overrides(overrides) + ([f"train.session_hours={session_hours}"] if session_hours else [])
cfg = load_config(preset, run_overrides)
print(f"shard {shard_index}: preset {preset}, model {cfg.model.name_or_path}, {cfg.train.max_steps} steps")

# %%
# More than one GPU (Kaggle T4 x2): one DDP process per GPU under torchrun; else train right here.
from kit.launch import gpu_count, launch_shard

if gpu_count() > 1:
    metrics = launch_shard(gpu_count(), preset, run_overrides, data, shard_index, output)
else:
    metrics = train_shard(cfg, data, shard_index, output)

# %%
{k: v for k, v in metrics.items() if k != "config"}

# %%
# The loss curve, saved as shard-II/loss.png beside the adapter (and pushed with it to a Hub run).
from kit.progress import show_loss_plot

show_loss_plot(metrics);
