"""`python -m kit split|train|merge|status|plan`: the command line over the same calls the notebooks make.

    python -m kit split data.jsonl --shards 6 --out shards/ [--eval-fraction 0.02] [--seed 0] [--push-to hf://datasets/me/data]
    python -m kit train --preset cpu-tiny --data shards/ --shard 0 --output runs/x [--set train.max_steps=10]
    python -m kit train --preset colab-t4 --data hf://datasets/me/data --shard 0 --output hf://me/run [--work-dir DIR]
    python -m kit merge runs/x/shard-00 runs/x/shard-01 --strategy average --out merged/ [--method exact|svd|...]
    python -m kit status hf://me/run [--data shards/] [--stale-after MINUTES] [--json]
    python -m kit plan --preset colab-t4 [--set lora.r=32] [--time-limit 14400]
    torchrun --standalone --nproc_per_node 2 -m kit train --preset kaggle-t4x2 ...   # DDP, one process per GPU

Errors the user can fix (every kit.errors.KitError: a bad record, an unknown key, a bad chat
template, a missing model, incompatible adapters, ...) print their message and exit 2, without a
traceback; KIT_TRACEBACK=1 shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from kit.config import available_presets, config_warnings, load_config
from kit.errors import ConfigError, KitError, MergeError
from kit.layout import EVAL_FILE, MANIFEST


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kit", description="Train LoRA adapters per data shard and merge them.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("split", help="hold out one eval split and cut the rest into N balanced shards")
    s.add_argument("input", help="JSONL file: one {'messages': [...]} or {'prompt','completion'} record per line")
    s.add_argument("--shards", type=int, required=True, help="number of training shards")
    s.add_argument("--out", required=True, help=f"output folder ({EVAL_FILE}, shard-II.jsonl, {MANIFEST})")
    s.add_argument("--eval-fraction", type=float, default=0.02, help="share held out as the common eval split")
    s.add_argument("--seed", type=int, default=0, help="shuffle seed; the same seed gives the same shards")
    s.add_argument(
        "--push-to", help="also upload the split: hf://datasets/USER/REPO (private unless --public) or a folder"
    )
    s.add_argument("--public", action="store_true", help="create the --push-to repo public (default: private)")
    s.add_argument("--overwrite", action="store_true", help="replace a split already in --out (its files are removed)")

    t = sub.add_parser("train", help="train one shard (resumes if interrupted)")
    t.add_argument("--preset", required=True, help=f"preset name ({', '.join(available_presets())}) or YAML path")
    t.add_argument("--data", required=True, help="folder made by `kit split`")
    t.add_argument("--shard", type=int, required=True, help="shard index, from 0")
    t.add_argument("--output", required=True, help="run folder, or hf://USER/REPO; the shard writes OUTPUT/shard-II/")
    t.add_argument(
        "--work-dir", help="local folder for a hf:// (or remote folder) OUTPUT (default $KIT_CACHE/runs/USER--REPO)"
    )
    t.add_argument("--public", action="store_true", help="create the hf:// OUTPUT repo public (default: private)")
    t.add_argument(
        "--take-over",
        action="store_true",
        help="train the shard even though another session's lease on it looks alive (that session stops writing)",
    )
    t.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset key, e.g. train.lr=1e-4"
    )
    t.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="session budget: save and stop cleanly before it (sets train.session_hours)",
    )

    m = sub.add_parser(
        "merge", help="merge shard adapters (average, weighted, best, greedy); every candidate evaluated"
    )
    m.add_argument(
        "sources", nargs="+", help="shard folders (holding adapter/), adapter folders, or hf://USER/REPO/shard-II"
    )
    # Choices spelled out here (kit.compare.STRATEGIES, kit.merge.METHODS) so --help doesn't import torch.
    m.add_argument(
        "--strategy",
        choices=["average", "weighted", "best", "greedy"],
        default="average",
        help="average: equal weights; weighted: --weights or the shards' sample counts; "
        "best: the source with the lowest eval loss; greedy: model-soup average (best/greedy need --eval-data)",
    )
    m.add_argument(
        "--weights",
        help="comma-separated, one per source, normalised to sum 1 (strategy weighted; "
        "negatives allowed, write --weights=-1,2); default: train_examples per shard",
    )
    m.add_argument(
        "--method",
        choices=["exact", "full", "svd", "linear"],
        default="exact",
        help="exact: concatenated factors, rank = sum of ranks (default); full: merged into the base "
        "weights; svd: compressed to --rank, error reported; linear: PEFT factor averaging, a baseline only",
    )
    m.add_argument("--rank", type=int, help="target rank for --method svd (default: the largest source rank)")
    m.add_argument("--eval-data", help="split folder (or eval JSONL): score base, sources and candidates on it")
    m.add_argument(
        "--preset", help="preset whose model/eval settings score the candidates (default: the adapters' base)"
    )
    m.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset key, e.g. eval.generate_samples=64",
    )
    m.add_argument("--schema", help="JSON Schema file: also report the share of answers that validate")
    m.add_argument("--tolerance", type=float, default=0.01, help="eval-loss near-tie for --strategy best (nats)")
    m.add_argument(
        "--out",
        required=True,
        help="folder or hf://USER/REPO[/FOLDER] for the merged adapter (or model, with --method full)",
    )
    m.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out that is not an earlier merge (never into a source's run folder)",
    )

    st = sub.add_parser("status", help="every shard's state, step, loss, tokens/s and ETA; how to restart stale ones")
    st.add_argument("dest", help="the run: the --output of `kit train` (a folder or hf://USER/REPO)")
    st.add_argument(
        "--data", help="the split (folder or hf://datasets/USER/REPO): its manifest says which shards to expect"
    )
    st.add_argument(
        "--stale-after",
        type=float,
        default=None,
        metavar="MINUTES",
        help="a running shard silent this long is marked stale (default: 3 missed heartbeats of that shard, "
        "15 min at train.heartbeat_minutes=5)",
    )
    st.add_argument("--json", action="store_true", help="print {'shards': [...], 'totals': {...}} as JSON")

    cr = sub.add_parser(
        "close-round",
        help="fleet rounds (train.round_steps): make an open round's global from the shard adapters that arrived",
    )
    cr.add_argument("run", help="the run: the --output of `kit train` (a folder or hf://USER/REPO)")
    cr.add_argument("--round", type=int, help="which round (default: the newest with shard adapters and no global)")

    pl = sub.add_parser("plan", help="print the resolved config without training")
    pl.add_argument("--preset", required=True)
    pl.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pl.add_argument(
        "--time-limit", type=float, metavar="SECONDS", help="session budget (default: the preset's train.session_hours)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return _run(args)
    except KitError as e:  # what the user can fix: the message alone (KIT_TRACEBACK=1 shows where it came from)
        if os.environ.get("KIT_TRACEBACK"):
            raise
        flags = [f for f in (_flag_for(parser, args.command, p) for p in e.params) if f]
        print(f"error: {e}" + (f" (on the command line: {', '.join(flags)})" if flags else ""), file=sys.stderr)
        return 2


def _flag_for(parser: argparse.ArgumentParser, command: str, param: str) -> str | None:
    """The command line's spelling of a library parameter: `method` -> --method, `data.max_length` -> --set."""
    if "." in param:
        return f"--set {param}=..."
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        if action.dest == param or action.dest == param.removeprefix("num_"):
            return "/".join(action.option_strings) or None  # a positional: the message shows its value
    return None


def _run(args) -> int:
    if args.command == "split":
        from kit.data.shards import split_dataset

        if args.push_to:  # fail on a missing token before the work, not after it
            from kit.remote import open_remote_for_push

            open_remote_for_push(args.push_to, f"--push-to {args.push_to}")
        manifest = split_dataset(args.input, args.out, args.shards, args.eval_fraction, args.seed, args.overwrite)
        counts = {name: entry["count"] for name, entry in manifest["files"].items()}
        print(f"split {manifest['records']} records -> {args.out}: {counts}")
        if args.push_to:
            from kit.data.shards import push_split

            pushed = push_split(args.out, args.push_to, private=not args.public)
            print(
                f"pushed {args.out} -> {args.push_to}, with kit {pushed['kit']['version']} ({pushed['kit']['wheel']}): "
                "every shard notebook reading this split installs that kit"
            )
    elif args.command == "train":
        from kit.train import train_shard

        cfg = load_config(args.preset, _with_time_limit(args))
        train_shard(
            cfg,
            args.data,
            args.shard,
            args.output,
            work_dir=args.work_dir,
            private=not args.public,
            take_over=args.take_over,
        )
    elif args.command == "merge":
        from kit.compare import adapter_evaluator, eval_config, format_scores, load_schema, merge_and_compare
        from kit.merge import parse_weights

        weights = parse_weights(args.weights)
        if args.schema and not args.eval_data:
            raise MergeError("schema scores generated answers: give eval_data too", param="eval_data")
        cfg = eval_config(args.preset, args.set, args.sources) if (args.eval_data or args.preset) else None
        evaluator = None
        if args.eval_data:
            evaluator = adapter_evaluator(cfg, args.eval_data, load_schema(args.schema) if args.schema else None)
        report = merge_and_compare(
            args.sources,
            args.out,
            args.strategy,
            weights,
            args.method,
            args.rank,
            evaluator,
            base_model=cfg.resolved_model_path() if args.preset else None,
            tolerance=args.tolerance,
            eval_data=args.eval_data,
            schema=args.schema,
            overwrite=args.overwrite,
        )
        record = report["merge"]
        print(
            f"{args.strategy} ({args.method}): chose {report['chosen']}, "
            f"weights {dict(zip(record['names'], record['weights']))}, "
            f"rank {record['rank']}, relative error {record['relative_error']:.3g} -> {args.out}"
        )
        for note in report["compatibility_notes"]:
            print(f"note: {note}")
        print(format_scores(report["results"]))
    elif args.command == "status":
        from kit.status import format_fleet, read_fleet

        stale_after = None if args.stale_after is None else args.stale_after * 60
        fleet = read_fleet(args.dest, args.data, stale_after=stale_after)
        print(json.dumps(fleet, indent=2) if args.json else format_fleet(fleet))
    elif args.command == "close-round":
        from kit.round_store import close_round

        close_round(args.run, args.round)
    elif args.command == "plan":
        import contextlib

        from kit.budget import describe_plan
        from kit.platform import quantization_in_effect, resolve_platform

        cfg = load_config(args.preset, _with_time_limit(args))
        # stdout stays pure JSON for scripts; the decisions and the estimate go to stderr, for people.
        with contextlib.redirect_stdout(sys.stderr):
            resolve_platform(cfg)  # the decisions this machine would make, with their reasons
            print(quantization_in_effect(cfg))
            for warning in config_warnings(cfg):
                print(f"warning: {warning}")
        print(json.dumps(cfg.to_dict(), indent=2))
        print(describe_plan(cfg), file=sys.stderr)
    return 0


def _with_time_limit(args) -> list[str]:
    """--time-limit SECONDS is train.session_hours, spelled the way a scheduler states it."""
    if args.time_limit is None:
        return args.set
    if args.time_limit <= 0:
        raise ConfigError(
            f"--time-limit {args.time_limit:g}: give the session's length in seconds, e.g. --time-limit 14400"
        )
    return [*args.set, f"train.session_hours={args.time_limit / 3600!r}"]
