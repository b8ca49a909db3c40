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
# # Split a dataset into shards
# One shared eval split is held out first; the rest is cut into `num_shards` balanced shards,
# the same for a given seed. Give each shard to one runtime's `train_shard` notebook.
#
#     papermill notebooks/split.ipynb out/split.ipynb -p input_path data.jsonl -p num_shards 6

# %% tags=["parameters"]
input_path = "data.jsonl"  # @param {type:"string"}
num_shards = 6  # @param {type:"integer"}
out = "shards"  # @param {type:"string"}
eval_fraction = 0.02  # @param {type:"number"}
seed = 0  # @param {type:"integer"}
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
from kit.data.shards import split_dataset

manifest = split_dataset(input_path, out, num_shards, eval_fraction, seed)

# %%
{name: entry["count"] for name, entry in manifest["files"].items()}
