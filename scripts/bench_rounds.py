"""Benchmark: fleet rounds (kit/rounds.py) against the one-shot merge and one adapter trained on all the data.

    .venv/bin/python scripts/bench_rounds.py                       # cpu-demo, 4 shards x 20 steps (~50 min on 2 cores)
    .venv/bin/python scripts/bench_rounds.py --steps 8 --rounds 4 --outer avg --json   # a shorter run
    .venv/bin/python scripts/bench_rounds.py --smoke --json        # tiny model, a minute (tests/scripts/)

Every row sees the same examples in the same total number of steps: N shards x S steps
each, or one adapter for N*S steps over all the shards' data (the same shards, in turn).
The eval split is shared: eval loss over all of it, JSON validity and task accuracy
(scripts/make_demo_data.py's checker: every constraint of the request met) on every
eval prompt.

Rows:
    base              the model without an adapter
    one-shot          each shard trains S steps alone; kit's exact average of the N adapters
    rounds H=..       each shard trains H steps from the round's global adapter, its AdamW moments
                      kept across rounds (DiLoCo's way and kit's default);
                      the outer step (kit/rounds.py) makes the next global:
                      `avg` = plain averaging (outer lr 1, no momentum), `nesterov` = DiLoCo's
                      Nesterov momentum (outer lr 0.7, momentum 0.9, DiLoCo's published values),
                      both on the factors (kit's default); `avg-svd`, `nesterov-svd` in dW space with
                      an SVD back to rank r; SPACE:LR[/MOMENTUM] any other (factors:4 = the sum);
                      ` reset-opt` rows drop each shard's moments at every round's start
                      (train.round_reset_optimizer=true)
    all data          one adapter, N*S steps over the union of the shards (N times the sequential steps)
    synchronous Nx batch   one adapter, S steps of N micro-batches each over the union: N GPUs in one
                      data-parallel job, the same examples and compute. What parallel shards can hope
                      for: DiLoCo's claim is rounds matching this, not the N*S sequential steps above

Every row trains at train.lr: compare rows at their own best lr with `--set train.lr=...` (BENCHMARKS.md:
the S-step rows and the N*S-step row want different ones).

Per row: eval loss, JSON validity, task accuracy, the adapter bytes each shard uploaded
(one adapter per round; one in all for one-shot), and seconds. The report gives the lr once: every
row trains at it. No network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("KIT_PROGRESS", "off")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

OUTERS = {  # name: kit/rounds.py's outer step (space "factors" is kit's default)
    "avg": dict(lr=1.0, momentum=0.0, space="factors"),
    "nesterov": dict(lr=0.7, momentum=0.9, space="factors"),
    "avg-svd": dict(lr=1.0, momentum=0.0, space="svd"),
    "nesterov-svd": dict(lr=0.7, momentum=0.9, space="svd"),
}

OPTIMIZER_MODES = ("reset", "kept")  # the shards' AdamW moments at a round's start (train.round_reset_optimizer)


def outer_spec(name: str) -> dict:
    """{lr, momentum, space} for a name of OUTERS or SPACE:LR[/MOMENTUM], e.g. factors:4 or svd:0.7/0.9."""
    from kit.config import OUTER_SPACES

    if name in OUTERS:
        return OUTERS[name]
    space, _, numbers = name.partition(":")
    lr, _, momentum = numbers.partition("/")
    try:
        if space not in OUTER_SPACES:
            raise ValueError(space)
        return dict(lr=float(lr), momentum=float(momentum or 0.0), space=space)
    except ValueError:
        raise SystemExit(
            f"--outer {name!r}: use one of {', '.join(OUTERS)} or SPACE:LR[/MOMENTUM] with SPACE one of "
            f"{', '.join(OUTER_SPACES)}"
        ) from None


def load_demo():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_demo_data", ROOT / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(preset: str, overrides: list[str], shards: int, examples: int, eval_examples: int, work: Path):
    """(cfg, tokenizer, one dataset per shard, the eval records, the demo module)."""
    from kit.config import load_config
    from kit.data.records import to_messages
    from kit.data.shards import load_eval, load_shard, split_dataset
    from kit.data.tokenize import encode_records
    from kit.model import load_tokenizer

    demo = load_demo()
    source = work / "data.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in demo.generate(examples, seed=0)))
    split_dataset(source, work / "split", num_shards=shards, eval_fraction=eval_examples / examples, seed=0)
    eval_records = load_eval(work / "split")
    cfg = load_config(preset, [*overrides, f"eval.generate_samples={len(eval_records)}", "train.session_hours=0"])
    tokenizer = load_tokenizer(cfg)
    datasets = []
    for shard in range(shards):
        convs = [to_messages(r) for r in load_shard(work / "split", shard)]
        datasets.append(encode_records(tokenizer, convs, max_length=cfg.data.max_length, turns=cfg.data.turns)[0])
    return cfg, tokenizer, datasets, eval_records, demo


def with_steps(cfg, steps: int):
    import copy

    out = copy.deepcopy(cfg)
    out.train.max_steps, out.train.save_steps = steps, steps
    return out


def train_alone(cfg, dataset, tokenizer, out: Path, steps: int) -> Path:
    """One adapter, `steps` steps on `dataset` (kit's own Trainer); its folder."""
    from kit.train import build_trainer

    trainer = build_trainer(with_steps(cfg, steps), dataset, tokenizer, out)
    trainer.train()
    trainer.model.save_pretrained(out / "adapter")
    return out / "adapter"


def run_rounds(cfg, datasets, tokenizer, out: Path, steps: int, round_steps: int, outer: str, keep_optimizer: bool):
    """The fleet in rounds, in this process: (the last global adapter, bytes uploaded per shard, round records)."""
    from transformers.trainer_utils import get_last_checkpoint

    from kit.layout import ADAPTER_WEIGHTS
    from kit.merge import load_adapters
    from kit.model import add_lora, load_base_model
    from kit.rounds import RoundBoundary, RoundStart, outer_step, save_global
    from kit.train import build_trainer

    spec = outer_spec(outer)
    shard_cfg = with_steps(cfg, steps)
    global_dir = out / "rounds" / "000" / "global"
    add_lora(load_base_model(cfg), cfg).save_pretrained(global_dir)  # round 0: the shared LoRA init
    state, uploaded, records = None, [0] * len(datasets), []
    for round_ in range(steps // round_steps):
        round_dir, sources = out / "rounds" / f"{round_ + 1:03d}", []
        for i, dataset in enumerate(datasets):
            shard_dir = out / f"shard-{i:02d}"
            start = RoundStart(global_dir if round_ else None, reset_optimizer=not keep_optimizer)
            trainer = build_trainer(
                shard_cfg, dataset, tokenizer, shard_dir, callbacks=[start, RoundBoundary(round_steps)]
            )
            trainer.train(resume_from_checkpoint=get_last_checkpoint(str(shard_dir)) if shard_dir.is_dir() else None)
            sources.append(round_dir / f"shard-{i:02d}")
            trainer.model.save_pretrained(sources[-1])
            uploaded[i] += (sources[-1] / ADAPTER_WEIGHTS).stat().st_size
        start_adapter, *shard_adapters = load_adapters([global_dir, *sources])
        new, state, record = outer_step(
            start_adapter,
            shard_adapters,
            [len(d) for d in datasets],
            state=state,
            **spec,
        )
        global_dir = round_dir / "global"
        save_global(new, start_adapter, global_dir)
        records.append({"round": round_ + 1, **{k: v for k, v in record.items() if k != "shards"}})
    return global_dir, uploaded, records


def score(cfg, tokenizer, eval_records, demo, adapter_dir: Path | None) -> dict:
    from kit.evaluate import evaluate_model
    from kit.model import load_base_model

    model = load_base_model(cfg)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    result = evaluate_model(model, tokenizer, eval_records, cfg.eval, cfg.data.max_length, turns=cfg.data.turns)
    answers = result.pop("generations")
    return {
        "eval_loss": round(result["eval_loss"], 4),
        "json_valid_rate": round(result["json_valid_rate"], 4),
        "task_accuracy": round(demo.task_accuracy(eval_records[: len(answers)], answers), 4),
        "prompts": len(answers),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-demo")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="steps per shard (S)")
    parser.add_argument("--rounds", default="5,10", help="round lengths H to run, comma-separated")
    parser.add_argument(
        "--outer",
        default="avg,nesterov",
        help="outer optimizers: avg, nesterov (factor space), avg-svd, nesterov-svd, or SPACE:LR[/MOMENTUM]",
    )
    parser.add_argument(
        "--optimizer",
        default=None,
        help=f"the shards' optimizer state across rounds: {' or '.join(OPTIMIZER_MODES)} (kept is DiLoCo's), or "
        "both comma-separated; default: the preset's train.round_reset_optimizer, --set's included",
    )
    parser.add_argument("--examples", type=int, default=3000, help="demo records generated, the eval split's included")
    parser.add_argument(
        "--eval-examples",
        type=int,
        default=60,
        help="the shared eval split (fewer --examples with more --steps: shards trained for several epochs)",
    )
    parser.add_argument("--smoke", action="store_true", help="cpu-tiny, 2 shards x 4 steps, H=2: seconds")
    parser.add_argument(
        "--rows", default="base,one-shot,rounds,all data,synchronous", help="which rows to run (comma-separated)"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a preset override, e.g. train.seed=1"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    overrides = ["eval.max_new_tokens=96", *args.set]
    if args.smoke:
        args.preset, args.shards, args.steps, args.rounds = "cpu-tiny", 2, 4, "2"
        args.examples, args.eval_examples = 80, 2
        overrides = ["eval.max_new_tokens=8", *args.set]
    hs = [int(h) for h in args.rounds.split(",") if h]
    optimizers = [o.strip() for o in (args.optimizer or "").split(",") if o.strip()]
    if args.optimizer is not None and (not optimizers or set(optimizers) - set(OPTIMIZER_MODES)):
        parser.error(f"--optimizer {args.optimizer!r}: use {', '.join(OPTIMIZER_MODES)}, or both comma-separated")
    if not 0 < args.eval_examples < args.examples:
        parser.error(f"--eval-examples {args.eval_examples}: must be between 0 and --examples {args.examples}")
    bad = [h for h in hs if args.steps % h]
    if bad:
        parser.error(f"--rounds {bad}: each H must divide --steps {args.steps}")

    rows, began = {}, time.monotonic()
    # The Trainer prints its log lines to stdout: they go to stderr, so stdout is the report alone.
    with tempfile.TemporaryDirectory(prefix="kit-bench-rounds-") as tmp, contextlib.redirect_stdout(sys.stderr):
        work = Path(tmp)
        cfg, tokenizer, datasets, eval_records, demo = prepare(
            args.preset, overrides, args.shards, args.examples, args.eval_examples, work
        )

        shard_examples = [len(d) for d in datasets]
        if not optimizers:  # the run's own setting, so `--set train.round_reset_optimizer=false` keeps moments
            optimizers = ["reset" if cfg.train.round_reset_optimizer else "kept"]
        wanted = {r.strip() for r in args.rows.split(",")}

        def timed(label, fn):
            if label not in wanted and label.split(" ")[0] not in wanted:
                return
            t0 = time.monotonic()
            adapter, uploaded, extra = fn()
            row = score(cfg, tokenizer, eval_records, demo, adapter)
            rows[label] = {
                **row,
                "uploaded_bytes_per_shard": uploaded,
                "seconds": round(time.monotonic() - t0, 1),
                **extra,
            }
            print(f"{label}: {json.dumps(rows[label])}", file=sys.stderr, flush=True)

        timed("base", lambda: (None, 0, {}))

        def one_shot():
            from kit.layout import ADAPTER_WEIGHTS
            from kit.merge import merge_adapters

            adapters = [
                train_alone(cfg, d, tokenizer, work / f"one-shot-{i}", args.steps) for i, d in enumerate(datasets)
            ]
            merge_adapters(adapters, work / "one-shot-merged", method="exact")
            return work / "one-shot-merged", (adapters[0] / ADAPTER_WEIGHTS).stat().st_size, {}

        timed("one-shot", one_shot)
        for h in hs:
            for outer in args.outer.split(","):
                for optimizer in optimizers:
                    keep = optimizer == "kept"
                    label = f"rounds H={h} {outer}" + ("" if keep else " reset-opt")
                    out = work / "".join(c if c.isalnum() or c in "-." else "_" for c in label)

                    def rounds(h=h, outer=outer, keep=keep, out=out):
                        adapter, uploaded, records = run_rounds(
                            cfg, datasets, tokenizer, out, args.steps, h, outer, keep
                        )
                        extra = {
                            "rounds": len(records),
                            "outer": outer_spec(outer),
                        }
                        for key in ("svd_error", "factor_error"):
                            errors = [r[key] for r in records if key in r]
                            if errors:
                                extra[f"max_{key}"] = round(max(errors), 4)
                        return adapter, max(uploaded), extra

                    timed(label, rounds)

        def all_data():
            from datasets import concatenate_datasets

            merged = concatenate_datasets(datasets)
            adapter = train_alone(cfg, merged, tokenizer, work / "all-data", args.steps * args.shards)
            return adapter, 0, {}

        timed("all data", all_data)

        def synchronous():
            # What N GPUs in one data-parallel job would do with the same examples: S steps, each the mean
            # gradient of N micro-batches (grad_accum N is DDP's all-reduce, on one process).
            from datasets import concatenate_datasets

            wide = with_steps(cfg, args.steps)
            wide.train.grad_accum = cfg.train.grad_accum * args.shards
            merged = concatenate_datasets(datasets)
            return train_alone(wide, merged, tokenizer, work / "synchronous", args.steps), 0, {}

        timed(f"synchronous {args.shards}x batch", synchronous)
    report = {
        "preset": args.preset,
        "shards": args.shards,
        "steps_per_shard": args.steps,
        "examples": args.examples,
        "overrides": args.set,
        "lr": cfg.train.lr,  # every row's (Rows, above)
        "eval_examples": len(eval_records),
        "shard_examples": shard_examples,
        "seconds": round(time.monotonic() - began, 1),
        "rows": rows,
    }
    reference = rows.get("all data", {}).get("eval_loss")
    for row in rows.values():
        row["eval_loss_vs_all_data"] = round(row["eval_loss"] / reference - 1, 4) if reference else None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(table(report))
    return report


def table(report: dict) -> str:
    lines = [
        "| adapter | eval loss | vs all data | JSON valid | task accuracy | uploaded / shard | seconds |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, r in report["rows"].items():
        lines.append(
            f"| {label} | {r['eval_loss']:.4f} | "
            + ("—" if r["eval_loss_vs_all_data"] is None else f"{r['eval_loss_vs_all_data']:+.1%}")
            + f" | {r['json_valid_rate']:.0%} | "
            f"{r['task_accuracy']:.0%} | {r['uploaded_bytes_per_shard'] / 1e6:.1f} MB | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
