"""Benchmark: trained tokens per second with padding to max_length, dynamic padding, and padding-free packing.

    .venv/bin/python scripts/bench_packing.py                     # tiny model, and SmolLM2-135M if prepared
    .venv/bin/python scripts/bench_packing.py --model tiny --json # last line: JSON of the tiny model's results

No network. One process, one LoRA model (peft, r=16, all-linear) per base model; every mode trains the
same synthetic chat-like examples (log-normal lengths, mean ~250 tokens, at most 1024) with a full
forward + backward + AdamW step. Modes:

    pad_max          SFTCollator(max_length=1024): every example padded to 1024 (what naive scripts do)
    dynamic          SFTCollator(): padded to the longest example of a randomly drawn batch
    dynamic_grouped  SFTCollator() on length-grouped batches (kit.batching.length_grouped_indices)
    padding_free     SFTCollator(padding_free=True) on token-budget batches (sdpa: transformers' T x T
                     block-causal mask over the packed row)
    padding_free_split  the same packed rows with attn_implementation="kit_packed_sdpa" (kit/attention.py:
                     one causal SDPA call per example, no T x T mask)

pad_max, dynamic, padding_free and padding_free_split train exactly the same examples in each step;
dynamic_grouped trains the same number of real tokens per step (its steps are cut from the
length-grouped order with the same token budget). All modes share one model; padding_free_split
switches its attention implementation to kit_packed_sdpa for its own step and back to sdpa after.
The modes run round-robin, one step each in turn, so a noisy neighbour on a shared machine slows all
of them alike; each mode first runs one short untimed warm-up step. The ratios are the
result; absolute tokens/s depend on the machine. Results: BENCHMARKS.md, section "Packing".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kit.attention import NAME as PACKED_SDPA  # noqa: E402  (importing it registers the implementation)
from kit.batching import length_grouped_indices  # noqa: E402
from kit.collator import IGNORE_INDEX, SFTCollator  # noqa: E402

MODELS_DIR = Path(os.environ.get("KIT_CACHE") or Path.home() / ".cache" / "kit") / "models"
MODELS = {"tiny": "tiny-smollm2", "smollm2": "SmolLM2-135M-Instruct"}
MAX_LENGTH = 1024
MEAN_LENGTH = 250
# (real tokens per step, timed steps per mode). Sized so `--model both` takes ~5 minutes on 2 busy
# cores: pad_max pads ~8 tiny examples to 8192 positions (~5 GB of logits and their gradient at a
# 49152-token vocabulary), and SmolLM2 trains ~10-30 tokens/s there, so it gets one step of ~4
# examples (pad_max: 4096 positions).
DEFAULTS = {"tiny": (2048, 3), "smollm2": (1024, 1)}
MODES = ("pad_max", "dynamic", "dynamic_grouped", "padding_free", "padding_free_split")
# The attention implementation per mode; every other mode runs transformers' sdpa.
ATTENTION = {"padding_free_split": PACKED_SDPA}


def synthetic_examples(n: int, seed: int = 0, vocab: int = 49152) -> list[dict]:
    """Chat-like examples: log-normal lengths (mean ~250, sigma 0.8, cut to [16, 1024]); the first
    third of each is the prompt (labels IGNORE_INDEX), the rest the trained answer."""
    rng = random.Random(seed)
    sigma = 0.8
    mu = math.log(MEAN_LENGTH) - sigma**2 / 2  # the mean of a log-normal is exp(mu + sigma^2 / 2)
    examples = []
    for _ in range(n):
        length = min(MAX_LENGTH, max(16, int(rng.lognormvariate(mu, sigma))))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = length // 3
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return examples


def cut_by_budget(order: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive runs of `order` holding at most `budget` real tokens each."""
    steps, current, used = [], [], 0
    for i in order:
        if current and used + lengths[i] > budget:
            steps.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    return steps + ([current] if current else [])


def step_plan(lengths: list[int], budget: int, n_steps: int, seed: int) -> dict[str, list[list[int]]]:
    """The example indices of every step, per mode."""
    shuffled = list(range(len(lengths)))
    random.Random(seed).shuffle(shuffled)
    same = cut_by_budget(shuffled, lengths, budget)[:n_steps]
    # Length-grouped with a batch of about budget / mean examples, as the Trainer's group_by_length would.
    grouped_order = length_grouped_indices(lengths, batch_size=max(1, budget // MEAN_LENGTH), seed=seed)
    grouped = cut_by_budget(grouped_order, lengths, budget)
    # Consecutive grouped steps all come from one mega-batch sorted long-to-short (and the first holds the
    # longest examples on purpose), so a few of them would not represent the mix: draw them at random.
    grouped = [grouped[k] for k in random.Random(seed + 1).sample(range(1, len(grouped)), n_steps)]
    return {
        "pad_max": same,
        "dynamic": same,
        "dynamic_grouped": grouped,
        "padding_free": same,
        "padding_free_split": same,
    }


def lora_model(path: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False  # a KV cache in training wastes memory and breaks packed isolation
    config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    torch.manual_seed(0)
    model = get_peft_model(model, config)
    model.train()
    return model


def bench_model(name: str, budget: int, steps: int, seed: int) -> dict:
    from transformers import AutoTokenizer

    path = MODELS_DIR / MODELS[name]
    tokenizer = AutoTokenizer.from_pretrained(path)
    examples = synthetic_examples(4000, seed=seed, vocab=len(tokenizer))
    lengths = [len(e["input_ids"]) for e in examples]
    plan = step_plan(lengths, budget, steps, seed)
    # Warm-up: one short step per mode (two 64-token examples) runs every code path once (kernels, the
    # allocator, mask building) without spending a full step; it is not timed.
    warm_up = [{k: v[:64] for k, v in examples[i].items()} for i in range(2)]
    collators = {
        "pad_max": SFTCollator(tokenizer, max_length=MAX_LENGTH),
        "dynamic": SFTCollator(tokenizer),
        "dynamic_grouped": SFTCollator(tokenizer),
        "padding_free": SFTCollator(tokenizer, padding_free=True),
        "padding_free_split": SFTCollator(tokenizer, padding_free=True),
    }
    # The same collators, but pad_max pads the warm-up to 128, not 1024: same code path, a fraction of the cost.
    warm_up_collators = {**collators, "pad_max": SFTCollator(tokenizer, max_length=128)}
    model = lora_model(path)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    totals = {m: {"seconds": 0.0, "real": 0, "total": 0} for m in MODES}

    for step in range(-1, steps):  # step -1 is the warm-up
        # Rotate which mode goes first so none always runs right after another's memory churn.
        for k in range(len(MODES)):
            mode = MODES[(step + 1 + k) % len(MODES)]
            if step < 0:
                batch = warm_up_collators[mode](warm_up)
            else:
                batch = collators[mode]([examples[i] for i in plan[mode][step]])
            real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
            # Switching is a config attribute on the shared model (no weights move), outside the timed span.
            model.base_model.model.set_attn_implementation(ATTENTION.get(mode, "sdpa"))
            started = time.perf_counter()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - started
            if step >= 0:
                t = totals[mode]
                t["seconds"] += seconds
                t["real"] += real
                t["total"] += batch["input_ids"].numel()
    return {
        mode: {
            "tokens_per_s": round(t["real"] / t["seconds"], 1),
            "padding_share": round(1 - t["real"] / t["total"], 4),
            "real_tokens": t["real"],
            "seconds": round(t["seconds"], 2),
        }
        for mode, t in totals.items()
    }


def print_table(name: str, budget: int, steps: int, results: dict) -> None:
    base = results["padding_free"]["tokens_per_s"]
    print(
        f"\n{name}: {steps} timed steps per mode, {budget} real tokens per step "
        "(fp32, LoRA r=16 all-linear; sdpa except padding_free_split)"
    )
    split = results["padding_free_split"]["tokens_per_s"]
    print(
        f"{'mode':<19} {'tokens/s':>10} {'padding':>8} {'real tokens':>12} {'seconds':>8} "
        f"{'padding-free is':>16} {'split is':>9}"
    )
    for mode in MODES:
        r = results[mode]
        print(
            f"{mode:<19} {r['tokens_per_s']:>10.1f} {r['padding_share']:>8.1%} {r['real_tokens']:>12} "
            f"{r['seconds']:>8.2f} {base / r['tokens_per_s']:>15.2f}x {split / r['tokens_per_s']:>8.2f}x"
        )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["tiny", "smollm2", "both"], default="both")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode (default: tiny 3, smollm2 1)")
    parser.add_argument(
        "--budget", type=int, default=None, help="real tokens per step (default: tiny 2048, smollm2 1024)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--json", action="store_true", help="print the last model's results as one JSON line at the end"
    )
    args = parser.parse_args(argv)

    names = ["tiny", "smollm2"] if args.model == "both" else [args.model]
    if args.model == "both" and not (MODELS_DIR / MODELS["smollm2"] / "config.json").is_file():
        print(f"{MODELS_DIR / MODELS['smollm2']} not found: benchmarking the tiny model only")
        names = ["tiny"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus")
    results = {}
    for name in names:
        budget = args.budget or DEFAULTS[name][0]
        steps = args.steps or DEFAULTS[name][1]
        started = time.perf_counter()
        results[name] = bench_model(name, budget, steps, args.seed)
        print_table(name, budget, steps, results[name])
        print(f"({time.perf_counter() - started:.0f} s for {name}, model loading included)")
    if args.json:
        last = results[names[-1]]
        print(json.dumps({mode: {k: last[mode][k] for k in ("tokens_per_s", "padding_share")} for mode in MODES}))
    return results


if __name__ == "__main__":
    main()
