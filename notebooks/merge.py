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
# **Strategy**: `average` (equal weights), `weighted` (`weights`, or each shard's training-example count),
# `best` (the shard adapter with the lowest eval loss; near-ties go to the higher JSON validity rate) or
# `greedy` (model soup: add shards, best first, only while the average's eval loss drops).
# **Method**: `exact` concatenates the factors, so the update is exactly the weighted average (rank = sum of
# ranks); `full` merges it into the base weights (a full model); `svd` compresses it to `rank` and reports the
# error; `linear` is PEFT's factor averaging, a labelled baseline only (it is not the average of the updates).
# With `eval_data` set, the base model, every shard adapter and every merge candidate are scored side by side
# on the shared eval split; the table is saved as `OUT/merge_report.json` and `OUT/README.md` is the model card.
#
#     papermill notebooks/merge.ipynb out/merge.ipynb -p run runs/my-run -p out merged -p eval_data shards

# %% tags=["parameters"]
run = "runs/my-run"  # @param {type:"string"}
sources = ""  # @param {type:"string"}
out = "merged"  # @param {type:"string"}
strategy = "average"  # @param ["average", "weighted", "best", "greedy"]
weights = ""  # @param {type:"string"}
method = "exact"  # @param ["exact", "full", "svd", "linear"]
rank = 0  # @param {type:"integer"}
preset = "colab-t4"  # @param ["colab-t4", "cpu-demo", "cpu-tiny"] {allow-input: true}
overrides = ""  # @param {type:"string"}
eval_data = ""  # @param {type:"string"}
schema = ""  # @param {type:"string"}
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
# `sources` (comma-separated shard or adapter folders) overrides `run`'s finished shards.
# `preset`/`overrides` only set how candidates are scored (the model they load, eval sizes).
from kit.compare import AdapterEvaluator, eval_config, format_table, load_schema, merge_and_compare
from kit.config import parse_overrides
from kit.merge import find_shard_adapters

source_list = [s.strip() for s in sources.split(",") if s.strip()] or find_shard_adapters(run)
evaluator = None
if eval_data:
    cfg = eval_config(preset, parse_overrides(overrides), source_list)
    evaluator = AdapterEvaluator(cfg, eval_data, load_schema(schema) if schema else None)
report = merge_and_compare(
    source_list, out, strategy, [float(w) for w in weights.split(",")] if weights else None, method, rank or None,
    evaluator, eval_data=eval_data or None, schema=schema or None,
)
merge = report["merge"]
print(f"{strategy} ({method}): chose {report['chosen']}; weights {dict(zip(merge['names'], merge['weights']))}; "
      f"rank {merge['rank']}; relative error {merge['relative_error']:.3g}")
print(*report["compatibility_notes"], sep="\n")
print(format_table(report["results"]))

# %%
# The scores as bars (needs matplotlib, which Colab and Kaggle have; the table above holds the same numbers).
if report["results"]:
    from kit.compare import plot_comparison

    png = plot_comparison(report["results"], f"{out}/merge_scores.png")
    if png is None:
        print("matplotlib is not installed here: no plot (pip install matplotlib to get one)")
    else:
        from IPython.display import Image, display

        display(Image(str(png)))
