"""Benchmark: tokenizing a shard at the seeds' scale, kit's encoder against the one it replaced.

    .venv/bin/python scripts/bench_tokenize.py                   # 100k demo conversations, SmolLM2 tokenizer
    .venv/bin/python scripts/bench_tokenize.py --n 5000 --json   # quick; last line: JSON of the results

No network. The conversations come from the demo generator (scripts/make_demo_data.py: a system
prompt, a request, a one-line JSON answer; ~120 ChatML tokens each). Runs, one after the other:

    baseline    the encoder kit had before (kit/data/tokenize.py at --baseline-rev, read with `git show`):
                every conversation rendered twice and tokenized alone, in one Python loop
    one_core    kit's encode_records with num_proc=1: the same work batched (one tokenizer call per
                256 conversations, straight to the Rust tokenizer)
    all_cores   kit's encode_records as training calls it (num_proc default: every core), writing the cache
    cached      the same call again: the Arrow cache, loaded without tokenizing anything

It also checks that kit's encoder gives the baseline's examples, token for token (both label the
demo's ChatML the same way; the plain-text end markers and reasoning rules change other templates).
Goal (issue 12): 100k conversations in under 60 s on 2 cores, a cached re-run under 2 s.
Results: BENCHMARKS.md, section "Tokenizing".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as the kit CLI runs: cores come from processes

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from make_demo_data import generate  # noqa: E402

from kit.data.records import to_messages  # noqa: E402
from kit.data.tokenize import encode_records  # noqa: E402
from kit.layout import kit_cache_dir  # noqa: E402
from kit.tables import text_table  # noqa: E402

BASELINE_REV = "fbfd2fb"  # the last commit before issue 12's encoder


def load_baseline(rev: str):
    """The old kit/data/tokenize.py as a module of its own (it imports only kit.errors and kit.files)."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:kit/data/tokenize.py"], capture_output=True, text=True
    )
    if source.returncode != 0:
        sys.exit(f"can't read kit/data/tokenize.py at {rev} ({source.stderr.strip()}); run from a git clone")
    path = Path(tempfile.mkdtemp(prefix="kit-bench-")) / "baseline_tokenize.py"
    path.write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("baseline_tokenize", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(call):
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="conversations (default 100000)")
    parser.add_argument(
        "--model",
        type=Path,
        default=kit_cache_dir() / "models" / "SmolLM2-135M-Instruct",
        help="tokenizer folder (default: the demo's SmolLM2, `make models`)",
    )
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the encoder to compare with")
    parser.add_argument("--skip-baseline", action="store_true", help="only kit's encoder (no git needed)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    conversations = [to_messages(r) for r in generate(args.n, seed=0)]
    rows, results = [], {"n": args.n, "cores": len(os.sched_getaffinity(0)), "model": str(args.model)}

    def record(name, seconds, dataset):
        results[name] = {"seconds": round(seconds, 2), "conversations_per_s": round(args.n / seconds)}
        rows.append([name, f"{seconds:.2f}", f"{args.n / seconds:,.0f}"])
        print(f"{name}: {seconds:.2f} s", flush=True)
        return dataset

    baseline = None
    if not args.skip_baseline:
        old = load_baseline(args.baseline_rev)
        seconds, (baseline, _) = timed(lambda: old.encode_records(tokenizer, conversations, args.max_length))
        record("baseline", seconds, baseline)
    seconds, (one_core, _) = timed(lambda: encode_records(tokenizer, conversations, args.max_length, num_proc=1))
    record("one_core", seconds, one_core)
    with tempfile.TemporaryDirectory(prefix="kit-bench-cache-") as cache:
        seconds, (all_cores, stats) = timed(
            lambda: encode_records(tokenizer, conversations, args.max_length, cache_dir=cache)
        )
        record("all_cores", seconds, all_cores)
        seconds, (cached, cached_stats) = timed(
            lambda: encode_records(tokenizer, conversations, args.max_length, cache_dir=cache)
        )
        record("cached", seconds, cached)
        assert cached_stats["cache_hit"], "the second call must load the cache"
        same_cached = cached["input_ids"] == all_cores["input_ids"] and cached["labels"] == all_cores["labels"]
    results["stats"] = stats
    results["same_as_one_core"] = (
        all_cores["input_ids"] == one_core["input_ids"] and all_cores["labels"] == one_core["labels"]
    )
    results["cached_equal"] = same_cached
    if baseline is not None:
        results["same_as_baseline"] = (
            baseline["input_ids"] == all_cores["input_ids"] and baseline["labels"] == all_cores["labels"]
        )
        base = results["baseline"]["seconds"]
        for name in ("one_core", "all_cores", "cached"):
            results[name]["speedup_vs_baseline"] = round(base / results[name]["seconds"], 2)
        for row in rows:
            row.append(f"{base / float(row[1]):.2f}x")
    header = ["run", "seconds", "conversations/s"] + (["vs baseline"] if baseline is not None else [])
    print("\n".join(text_table(header, rows, right={1, 2, 3})))
    print(
        f"{args.n} conversations, {results['cores']} cores; kit == one_core: {results['same_as_one_core']}, "
        f"cache == fresh: {same_cached}"
        + (f", kit == baseline: {results['same_as_baseline']}" if baseline is not None else "")
    )
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
