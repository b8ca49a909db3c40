"""Benchmark: kit's training step against TRL's SFTTrainer on the same data, model, LoRA and optimizer.

    .venv/bin/python scripts/bench_peers.py             # every mode, SmolLM2-135M-Instruct (~15 min on 2 cores)
    .venv/bin/python scripts/bench_peers.py --modes kit_preset,trl_default --steps 2 --json

No network at run time. TRL is a benchmark-only dependency: the script installs `trl` (no dependencies:
kit's venv has them) into build/bench-peers/site the first time, from the package index, and the TRL
modes import it from there; kit never does. Each mode runs in a fresh process of its own, one after
the other in this job, so its peak memory is its own.

Data: chats whose answers are JSON (scripts/make_demo_data.py's requests, one to six per chat, the
answer a JSON list of the designs; mean ~250 tokens, long tail), the same examples in the same order
for every mode, tokenized by each trainer itself with the model's chat template. The loss is on the
answer only everywhere (TRL: prompt-completion data, its completion-only loss). LoRA r=16, alpha 32,
dropout 0.05 on all linear layers, AdamW lr 2e-4, fp32, no gradient checkpointing (kit's CPU preset;
TRL's bf16 and checkpointing defaults switched off to match). One untimed warm-up step, then
--steps timed steps; tokens = the real (non-pad) input tokens the steps trained.

Modes:
    trl_default       SFTTrainer, its defaults: 8 examples a step, padded to the batch's longest
    trl_padding_free  SFTTrainer(padding_free=True): 8 examples a step in one unpadded row
    trl_bfd           SFTTrainer(packing=True, packing_strategy="bfd"): 2 packed rows of 1024 a step
    kit_padded        kit's trainer with data.padding_free=false (8 examples a step, dynamic padding)
    kit_preset        kit's trainer with the cpu-demo preset's own batching (no --set but the shared
                      settings above): what a user gets
    kit_budget_N      the preset with train.max_tokens_per_batch=N (the budget sweep: 1024 ... 8192)

Results: JSON and a table (tokens/s, peak RSS or peak CUDA memory, ratios to trl_default and to the
best TRL mode). BENCHMARKS.md, section "Peers".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

TRL_VERSION = "1.16.0"
TRL_SITE = ROOT / "build" / "bench-peers" / "site"
MODEL = "SmolLM2-135M-Instruct"
MAX_LENGTH = 1024
MICRO_BATCH = 8
LR = 2e-4
BUDGETS = (1024, 2048, 4096, 8192)
MODES = (
    "trl_default",
    "trl_padding_free",
    "trl_bfd",
    "kit_padded",
    "kit_preset",
    *(f"kit_budget_{b}" for b in BUDGETS),
)
SYSTEM = "You design buildings. Answer with a JSON list: one design per request, in order."


def conversations(n: int, seed: int = 0) -> list[list[dict]]:
    """Chats of one to six demo requests answered by one JSON list (mean ~250 SmolLM2 tokens)."""
    from make_demo_data import generate

    rng = random.Random(seed)
    pool = generate(n * 4, seed=seed)
    chats, i = [], 0
    for _ in range(n):
        k = min(6, 1 + int(rng.expovariate(0.8)))
        records, i = pool[i : i + k], i + k
        requests = "\n".join(f"{j + 1}. {r['messages'][0]['content']}" for j, r in enumerate(records))
        answers = [json.loads(r["messages"][-1]["content"]) for r in records]
        chats.append(
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": requests},
                {"role": "assistant", "content": json.dumps(answers, separators=(",", ":"))},
            ]
        )
    return chats


def data_summary(n: int) -> dict:
    """Token lengths of the chats under the model's chat template (what every mode trains on)."""
    from transformers import AutoTokenizer

    from kit.layout import kit_cache_dir

    tokenizer = AutoTokenizer.from_pretrained(kit_cache_dir() / "models" / MODEL)
    lengths = sorted(len(tokenizer.apply_chat_template(c, tokenize=True)["input_ids"]) for c in conversations(n))
    return {
        "chats": n,
        "mean_tokens": round(sum(lengths) / n),
        "median_tokens": lengths[n // 2],
        "p90_tokens": lengths[int(n * 0.9)],
        "max_tokens": lengths[-1],
    }


class CountingCollator:
    """Wraps a collator; records the real tokens of every batch it makes, in order."""

    def __init__(self, collate):
        self.collate, self.tokens = collate, []

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch.get("attention_mask")
        self.tokens.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch

    def __getattr__(self, name):  # what a trainer asks of its collator (kit's: padding_free)
        return getattr(self.collate, name)


def step_timer():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    return StepTimer()


def lora_config():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")


def run_trl(mode: str, chats, steps: int, out: Path) -> tuple:
    sys.path.insert(0, str(TRL_SITE))
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from kit.layout import kit_cache_dir

    path = kit_cache_dir() / "models" / MODEL
    tokenizer = AutoTokenizer.from_pretrained(path)
    data = Dataset.from_list([{"prompt": c[:-1], "completion": c[-1:]} for c in chats])
    extra = {
        "trl_default": {},
        # TRL refuses padding_free without packing unless max_length is None (it would not enforce it);
        # no chat here is near 1024 tokens, so nothing is cut either way.
        "trl_padding_free": {"padding_free": True, "max_length": None},
        "trl_bfd": {"packing": True, "packing_strategy": "bfd"},
    }[mode]
    config = SFTConfig(
        output_dir=str(out),
        max_length=extra.pop("max_length", MAX_LENGTH),
        per_device_train_batch_size=2 if mode == "trl_bfd" else MICRO_BATCH,
        learning_rate=LR,
        max_steps=steps + 1,
        lr_scheduler_type="cosine",
        optim="adamw_torch",
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1000,
        seed=0,
        data_seed=0,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **extra,
    )
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32", attn_implementation="sdpa")
    timer = step_timer()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora_config(),
        callbacks=[timer],
    )
    trainer.data_collator = CountingCollator(trainer.data_collator)
    trainer.train()
    return timer.ends, trainer.data_collator.tokens


def run_kit(mode: str, chats, steps: int, out: Path) -> tuple:
    from kit.config import load_config
    from kit.data.tokenize import encode_records
    from kit.model import load_tokenizer
    from kit.train import build_trainer

    shared = [
        f"model.name_or_path=${{KIT_CACHE}}/models/{MODEL}",
        f"data.max_length={MAX_LENGTH}",
        f"train.micro_batch_size={MICRO_BATCH}",
        f"train.lr={LR}",
        "train.warmup_steps=0",
        f"train.max_steps={steps + 1}",
        f"train.save_steps={steps + 10}",
        "train.logging_steps=1000",
    ]
    if mode == "kit_padded":
        shared.append("data.padding_free=false")
    elif mode.startswith("kit_budget_"):  # packed, whatever the preset says
        budget = mode.rsplit("_", 1)[1]
        shared += ["data.padding_free=true", "model.attn_implementation=auto", f"train.max_tokens_per_batch={budget}"]
    cfg = load_config("cpu-demo", shared)
    from kit.platform import resolve_platform

    resolve_platform(cfg, verbose=False)
    tokenizer = load_tokenizer(cfg)
    dataset, _ = encode_records(tokenizer, chats, max_length=MAX_LENGTH, turns=cfg.data.turns)
    timer = step_timer()
    trainer = build_trainer(cfg, dataset, tokenizer, out, callbacks=[timer])
    trainer.data_collator = CountingCollator(trainer.data_collator)
    trainer.train()
    settings = {"padding_free": cfg.data.padding_free, "tokens_per_batch": cfg.tokens_per_batch()}
    settings["attn_implementation"] = cfg.model.attn_implementation
    return timer.ends, trainer.data_collator.tokens, settings


def worker(mode: str, n: int, steps: int) -> dict:
    import torch

    chats = conversations(n)
    with tempfile.TemporaryDirectory(prefix=f"kit-peers-{mode}-") as out:
        result = (run_trl if mode.startswith("trl") else run_kit)(mode, chats, steps, Path(out))
    ends, tokens, *settings = result
    timed_tokens = sum(tokens[1 : steps + 1])  # batch 0 is the warm-up step's (every mode: 1 batch a step)
    seconds = ends[steps] - ends[0]
    report = {
        "mode": mode,
        "tokens_per_s": timed_tokens / seconds,
        "timed_tokens": timed_tokens,
        "seconds": seconds,
        "steps": steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **(settings[0] if settings else {}),
    }
    if torch.cuda.is_available():
        report["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return report


def ensure_trl() -> None:
    if (TRL_SITE / "trl").is_dir():
        return
    print(f"installing trl=={TRL_VERSION} into {TRL_SITE} (benchmark only)", flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(TRL_SITE), f"trl=={TRL_VERSION}"],
        check=True,
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of: {', '.join(MODES)}")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode, after one warm-up step")
    parser.add_argument("--n", type=int, default=400, help="conversations in the data (enough for every mode)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.n, args.steps)), flush=True)
        return {}

    modes = [m for m in args.modes.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    if any(m.startswith("trl") for m in modes):
        ensure_trl()
    results = {"data": data_summary(args.n)}
    print(f"data: {results['data']}", flush=True)
    for mode in modes:
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, __file__, "--worker", mode, "--n", str(args.n), "--steps", str(args.steps)],
            capture_output=True,
            text=True,
        )
        lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        if run.returncode != 0 or not lines:
            print(run.stdout[-2000:], run.stderr[-2000:], sep="\n")
            print(f"mode {mode} failed (exit {run.returncode}); going on with the others", flush=True)
            continue
        results[mode] = json.loads(lines[-1][len("RESULT ") :])
        print(f"{mode}: {results[mode]['tokens_per_s']:.1f} tokens/s ({time.monotonic() - started:.0f} s)", flush=True)

    runs = {m: r for m, r in results.items() if m != "data"}
    trl = {m: r for m, r in runs.items() if m.startswith("trl")}
    best_trl = max(trl, key=lambda m: trl[m]["tokens_per_s"]) if trl else None
    rows = []
    for mode, r in runs.items():
        memory = r.get("peak_cuda_mb", r["peak_rss_mb"])
        row = [mode, f"{r['tokens_per_s']:.1f}", f"{memory:.0f}"]
        if "trl_default" in results:
            r["vs_trl_default"] = r["tokens_per_s"] / results["trl_default"]["tokens_per_s"]
            row.append(f"{r['vs_trl_default']:.2f}x")
        if best_trl:
            r["vs_best_trl"] = r["tokens_per_s"] / trl[best_trl]["tokens_per_s"]
            row.append(f"{r['vs_best_trl']:.2f}x")
        rows.append(row)
    from kit.tables import text_table

    memory_name = "peak CUDA MB" if any("peak_cuda_mb" in r for r in runs.values()) else "peak RSS MB"
    header = ["mode", "tokens/s", memory_name] + (["vs trl_default"] if "trl_default" in results else [])
    header += [f"vs best TRL ({best_trl})"] if best_trl else []
    print("\n".join(text_table(header, rows, right=set(range(1, len(header))))))
    if args.json:
        print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
