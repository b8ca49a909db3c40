"""kit: fine-tune one LoRA adapter per data shard on whatever GPU runtime you have, then merge them.

The library behind the notebooks in `notebooks/` and the CLI `python -m kit`.
Data flows one way: records -> tokens -> batches -> Trainer -> checkpoints -> merge.

The public API is what the notebooks call, importable from `kit` itself:

    import kit
    kit.split_dataset("data.jsonl", "shards/", num_shards=4)
    metrics = kit.train_shard(kit.load_config("cpu-tiny"), "shards/", 0, "runs/x")
    report = kit.merge_and_compare(kit.find_shard_adapters("runs/x"), "merged/")
    print(kit.format_fleet(kit.read_fleet("runs/x")))

Names load on first use (PEP 562), so `import kit` stays cheap: `kit status`
and the install cell never pay for torch or transformers they don't need.
Everything else is internal and may change between versions.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that owns it
_PUBLIC = {
    "load_config": "kit.config",
    "parse_overrides": "kit.config",
    "split_dataset": "kit.data.shards",
    "push_split": "kit.data.shards",
    "train_shard": "kit.train",
    "launch_shard": "kit.launch",
    "gpu_count": "kit.distributed",
    "show_loss_plot": "kit.progress",
    "read_fleet": "kit.status",
    "format_fleet": "kit.status",
    "live_view": "kit.status",
    "show_loss_curves": "kit.status",
    "find_shard_adapters": "kit.merge",
    "parse_weights": "kit.merge",
    "merge_adapters": "kit.merge",
    "merge_and_compare": "kit.compare",
    "adapter_evaluator": "kit.compare",
    "eval_config": "kit.compare",
    "load_schema": "kit.compare",
    "format_scores": "kit.compare",
    "plot_comparison": "kit.compare",
    "close_round": "kit.round_store",
    "KitError": "kit.errors",
    "show_errors_first": "kit.errors",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'kit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
