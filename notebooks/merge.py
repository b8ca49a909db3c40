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
# # Merge the shard adapters
# `average` is the exact mean of the adapters' weight updates (factors concatenated, rank = sum of ranks).
# With `eval_data` set, the base model, every shard adapter and the merge are scored side by side
# on the shared eval split, and the table is saved as `OUT/merge_report.json`.
#
#     papermill notebooks/merge.ipynb out/merge.ipynb -p run runs/my-run -p out merged

# %% tags=["parameters"]
run = "runs/my-run"  # @param {type:"string"}
out = "merged"  # @param {type:"string"}
strategy = "average"  # @param ["average", "weighted"]
weights = ""  # @param {type:"string"}
preset = "colab-t4"  # @param ["colab-t4", "cpu-demo", "cpu-tiny"] {allow-input: true}
overrides = ""  # @param {type:"string"}
eval_data = ""  # @param {type:"string"}
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
from kit.merge import find_shard_adapters, merge_adapters

sources = find_shard_adapters(run)
report = merge_adapters(sources, out, [float(w) for w in weights.split(",")] if strategy == "weighted" else None)
report

# %%
if eval_data:
    from kit.compare import compare_adapters, format_table
    from kit.config import load_config, parse_overrides

    cfg = load_config(preset, parse_overrides(overrides))
    table = compare_adapters(cfg, eval_data, {**{p.parent.name: p for p in sources}, "merged": out}, report_dir=out)
    print(format_table(table))
