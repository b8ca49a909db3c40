"""Benchmark: kit's training step on a GPU, per preset path: tokens/s, MFU and peak memory, in one call.

    scripts/bench_gpu.sh                           # a GPU machine: every shape and path (< 8 min, one H100/H200)
    .venv/bin/python scripts/bench_gpu.py --smoke  # CPU: a tiny shape, every path once (< 3 min)

No downloads: the models are built from the configs of Qwen2.5-0.5B, Qwen2.5-1.5B and a Llama-3-8B shape
with random weights, and the data is random token ids (log-normal lengths, mean ~250, at most 1024; the
first third of each example is prompt, the rest labelled), so nothing needs a tokenizer. Each path builds
its Trainer with kit.train.build_trainer, the one a shard trains with, and runs one untimed warm-up step
and --steps timed ones.

Paths (the presets' own settings, on this GPU):
    bf16_lora_packed   h100-80g: bf16 (fp16 below compute capability 8.0), LoRA r=16 all-linear, padding-free
                       token budget of 16 x 1024, attention `auto` (FlashAttention-2 or kit_packed_sdpa)
    bf16_lora_padded   the same with data.padding_free=false, 16 examples a step padded to the longest
    qlora_packed       colab-t4: fp16 compute, NF4 4-bit base (bitsandbytes), gradient checkpointing,
                       padding-free budget 4 x 1024 (the T4's goal: within 15 GB)
    qlora_padded       the same padded, 4 examples a step

MFU = tokens/s x 4 N / the GPU's dense bf16/fp16 peak, N the base's matmul weights (attention, MLP, LM
head; not the embedding lookup): forward 2N plus the backward through the frozen weights 2N FLOPs per
token; recompute and LoRA's own FLOPs are not counted. Peak memory: torch.cuda.max_memory_allocated per
path (peak RSS on CPU). Writes one JSON file (--out). Results: BENCHMARKS.md, section "GPU".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_peers import CountingCollator, step_timer  # noqa: E402

# The public configs' shapes (hidden, layers, heads, kv heads, MLP width, vocabulary).
SHAPES = {
    "qwen2.5-0.5b": ("qwen2", 896, 24, 14, 2, 4864, 151936),
    "qwen2.5-1.5b": ("qwen2", 1536, 28, 12, 2, 8960, 151936),
    "llama3-8b": ("llama", 4096, 32, 32, 8, 14336, 128256),
    "smoke": ("qwen2", 64, 2, 4, 2, 128, 4096),
}
# Dense bf16/fp16 tensor-core peaks (no sparsity), by the name torch reports.
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "V100": 125e12,
    "T4": 65e12,
    "P100": 18.7e12,
}
PATHS = {
    "bf16_lora_packed": ("h100-80g", []),
    "bf16_lora_padded": ("h100-80g", ["data.padding_free=false"]),
    "qlora_packed": ("colab-t4", ["train.precision=fp16"]),
    "qlora_padded": ("colab-t4", ["train.precision=fp16", "data.padding_free=false"]),
}
QLORA_SHAPES = ("qwen2.5-0.5b", "qwen2.5-1.5b", "smoke")  # 8B QLoRA would first write 16 GB of random weights


def model_config(shape: str):
    from transformers import LlamaConfig, Qwen2Config

    kind, hidden, layers, heads, kv, mlp, vocab = SHAPES[shape]
    cls = Qwen2Config if kind == "qwen2" else LlamaConfig
    return cls(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=mlp,
        vocab_size=vocab,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
    )


def matmul_params(config) -> int:
    h, layers, heads, kv = (
        config.hidden_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
    )
    head_dim = h // heads
    attention = h * h * 2 + 2 * h * kv * head_dim  # q, o; k, v
    return layers * (attention + 3 * h * config.intermediate_size) + h * config.vocab_size


def peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def random_dataset(vocab: int, n: int, seed: int = 0):
    from datasets import Dataset

    rng = random.Random(seed)
    rows = {"input_ids": [], "labels": [], "length": []}
    for _ in range(n):
        length = max(16, min(1024, int(rng.lognormvariate(5.3, 0.6))))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = length // 3
        rows["input_ids"].append(ids)
        rows["labels"].append([-100] * prompt + ids[prompt:])
        rows["length"].append(length)
    return Dataset.from_dict(rows)


def config_for(path: str, shape: str, model_dir: Path, steps: int):
    from kit.config import load_config
    from kit.platform import resolve_platform

    preset, overrides = PATHS[path]
    cfg = load_config(
        preset,
        [
            *overrides,
            f"model.name_or_path={model_dir}",
            f"train.max_steps={steps + 1}",
            f"train.save_steps={steps + 10}",
            "train.warmup_steps=0",
            "train.logging_steps=1000",
            "train.session_hours=0",
        ],
    )
    if not torch.cuda.is_available():  # --smoke: the CPU's dtype and kernels
        cfg.train.precision, cfg.model.attn_implementation = "fp32", "auto"
        cfg.train.optim = "adamw_torch"
    resolve_platform(cfg, verbose=False)
    return cfg


def run_path(path: str, shape: str, model_dir: Path, dataset, steps: int) -> dict:
    from kit.model import DTYPES
    from kit.train import build_trainer

    cfg = config_for(path, shape, model_dir, steps)
    base = None
    if not cfg.model.load_in_4bit:  # bf16 paths: the random model straight on the device, no disk round trip
        from transformers import AutoModelForCausalLM

        import kit.attention  # noqa: F401

        config = model_config(shape)
        config._attn_implementation = cfg.model.attn_implementation
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_config(
            config, dtype=DTYPES[cfg.train.dtype], attn_implementation=cfg.model.attn_implementation
        )
        base.config.use_cache = False
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    timer = step_timer()
    with tempfile.TemporaryDirectory(prefix="kit-gpu-run-") as out:
        trainer = build_trainer(cfg, dataset, SimpleNamespace(pad_token_id=0), Path(out), [timer], base_model=base)
        trainer.data_collator = CountingCollator(trainer.data_collator)
        trainer.train()
    accum = cfg.train.grad_accum  # micro-batches per step: the first `accum` made the warm-up step
    tokens = sum(trainer.data_collator.tokens[accum : accum * (steps + 1)])
    seconds = timer.ends[steps] - timer.ends[0]
    tokens_per_s = tokens / seconds
    flops = peak_flops()
    n = matmul_params(model_config(shape))
    result = {
        "shape": shape,
        "path": path,
        "precision": cfg.train.precision,
        "quantize": cfg.model.quantize,
        "attn_implementation": cfg.model.attn_implementation,
        "padding_free": cfg.data.padding_free,
        "tokens_per_batch": cfg.tokens_per_batch() if cfg.data.padding_free else None,
        "micro_batch_size": cfg.train.micro_batch_size,
        "grad_accum": cfg.train.grad_accum,
        "tokens_per_s": round(tokens_per_s, 1),
        "mfu": round(tokens_per_s * 4 * n / flops, 4) if flops else None,
        "matmul_params": n,
    }
    if torch.cuda.is_available():
        result["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    del trainer, base
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def saved_random_model(shape: str, folder: Path) -> Path:
    """A random-weight checkpoint of `shape` (fp16), for the paths that load through kit's 4-bit loader."""
    from transformers import AutoModelForCausalLM

    path = folder / shape
    if not (path / "config.json").is_file():
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(model_config(shape), dtype=torch.float16).save_pretrained(path)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU check: the tiny shape, 1 timed step")
    parser.add_argument("--shapes", default="qwen2.5-0.5b,qwen2.5-1.5b,llama3-8b")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--steps", type=int, default=3, help="timed steps per path, after one warm-up")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench-out")) / "gpu.json")
    args = parser.parse_args(argv)
    shapes = ["smoke"] if args.smoke else args.shapes.split(",")
    steps = 1 if args.smoke else args.steps
    has_bnb = __import__("importlib.util").util.find_spec("bitsandbytes") is not None
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = {"device": device, "torch": torch.__version__, "peak_flops": peak_flops(), "results": []}
    print(f"device: {device}; peak {report['peak_flops']} FLOP/s; bitsandbytes: {has_bnb}", flush=True)
    with tempfile.TemporaryDirectory(prefix="kit-gpu-models-") as models:
        for shape in shapes:
            dataset = random_dataset(SHAPES[shape][-1], n=64 if args.smoke else 400)
            for path in args.paths.split(","):
                if path.startswith("qlora") and (shape not in QLORA_SHAPES or not has_bnb):
                    print(f"{shape} {path}: skipped ({'no bitsandbytes' if not has_bnb else '8B QLoRA not run'})")
                    continue
                started = time.monotonic()
                try:
                    model_dir = saved_random_model(shape, Path(models)) if path.startswith("qlora") else Path(models)
                    result = run_path(path, shape, model_dir, dataset, steps)
                except torch.cuda.OutOfMemoryError as error:
                    result = {"shape": shape, "path": path, "error": f"out of memory: {str(error)[:200]}"}
                result["wall_s"] = round(time.monotonic() - started, 1)
                report["results"].append(result)
                print(json.dumps(result), flush=True)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(report, indent=2))  # after each path: a timeout keeps what ran
    from kit.tables import text_table

    memory = "peak_memory_gb" if torch.cuda.is_available() else "peak_rss_gb"
    rows = [
        [
            r["shape"],
            r["path"],
            str(r.get("tokens_per_s", "-")),
            "-" if r.get("mfu") is None else f"{r['mfu']:.1%}",
            str(r.get(memory, r.get("error", "-"))),
        ]
        for r in report["results"]
    ]
    print("\n".join(text_table(["shape", "path", "tokens/s", "MFU", memory], rows, right={2, 3, 4})))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
