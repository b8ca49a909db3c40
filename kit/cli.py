"""`python -m kit split|train|merge|plan`: the command line over the same calls the notebooks make.

    python -m kit split data.jsonl --shards 6 --out shards/ [--eval-fraction 0.02] [--seed 0]
    python -m kit train --preset cpu-tiny --data shards/ --shard 0 --output runs/x [--set train.max_steps=10]
    python -m kit merge runs/x/shard-00 runs/x/shard-01 --strategy average --out merged/
    python -m kit plan --preset colab-t4 [--set lora.r=32]

Errors the user can fix (bad record, unknown key, shard out of range,
incompatible adapters) print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kit.config import ConfigError, available_presets, load_config
from kit.data.records import RecordError
from kit.data.shards import ShardError

USER_ERRORS = (ConfigError, RecordError, ShardError)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kit", description="Train LoRA adapters per data shard and merge them.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("split", help="hold out one eval split and cut the rest into N balanced shards")
    s.add_argument("input", help="JSONL file: one {'messages': [...]} or {'prompt','completion'} record per line")
    s.add_argument("--shards", type=int, required=True, help="number of training shards")
    s.add_argument("--out", required=True, help="output folder (eval.jsonl, shard-II.jsonl, manifest.json)")
    s.add_argument("--eval-fraction", type=float, default=0.02, help="share held out as the common eval split")
    s.add_argument("--seed", type=int, default=0, help="shuffle seed; the same seed gives the same shards")

    t = sub.add_parser("train", help="train one shard (resumes if interrupted)")
    t.add_argument("--preset", required=True, help=f"preset name ({', '.join(available_presets())}) or YAML path")
    t.add_argument("--data", required=True, help="folder made by `kit split`")
    t.add_argument("--shard", type=int, required=True, help="shard index, from 0")
    t.add_argument("--output", required=True, help="run folder; the shard writes OUTPUT/shard-II/")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset key, e.g. train.lr=1e-4")

    m = sub.add_parser("merge", help="merge shard adapters into one")
    m.add_argument("sources", nargs="+", help="shard folders (holding adapter/) or adapter folders")
    m.add_argument("--strategy", choices=["average", "weighted"], default="average")
    m.add_argument("--weights", help="comma-separated weights, one per source (strategy weighted)")
    m.add_argument("--out", required=True, help="folder for the merged adapter")

    pl = sub.add_parser("plan", help="print the resolved config without training")
    pl.add_argument("--preset", required=True)
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from kit.merge import MergeError

    try:
        return _run(args)
    except (*USER_ERRORS, MergeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command == "split":
        from kit.data.shards import split_dataset

        manifest = split_dataset(args.input, args.out, args.shards, args.eval_fraction, args.seed)
        counts = {name: entry["count"] for name, entry in manifest["files"].items()}
        print(f"split {manifest['records']} records -> {args.out}: {counts}")
    elif args.command == "train":
        from kit.train import train_shard

        cfg = load_config(args.preset, args.set)
        train_shard(cfg, args.data, args.shard, args.output)
    elif args.command == "merge":
        from kit.merge import MergeError, merge_adapters

        weights = None
        if args.strategy == "weighted":
            if not args.weights:
                raise MergeError("--strategy weighted needs --weights w1,w2,... (one per source)")
            weights = [float(w) for w in args.weights.split(",")]
        report = merge_adapters(args.sources, args.out, weights)
        print(json.dumps(report, indent=2))
    elif args.command == "plan":
        cfg = load_config(args.preset, args.set)
        print(json.dumps(cfg.to_dict(), indent=2))
    return 0
