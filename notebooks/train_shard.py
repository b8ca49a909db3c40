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
# Respect each platform's terms: Colab's FAQ, for one, forbids using several accounts to get around its limits.

# %% tags=["parameters"]
shard_index = 0  # @param {type:"integer"}
preset = "colab-t4"  # @param ["colab-t4", "cpu-demo", "cpu-tiny"] {allow-input: true}
data = "shards"  # @param {type:"string"}
output = "runs/my-run"  # @param {type:"string"}
overrides = ""  # @param {type:"string"}
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
from kit.config import load_config, parse_overrides
from kit.train import train_shard

cfg = load_config(preset, parse_overrides(overrides))
print(f"shard {shard_index}: preset {preset}, model {cfg.model.name_or_path}, {cfg.train.max_steps} steps")

# %%
metrics = train_shard(cfg, data, shard_index, output)

# %%
{k: v for k, v in metrics.items() if k != "config"}
