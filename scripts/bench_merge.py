"""Benchmark: time to merge N LoRA adapters of real model shapes on CPU, by method.

    .venv/bin/python scripts/bench_merge.py                       # 6 adapters, r=16, both shapes, exact + svd
    .venv/bin/python scripts/bench_merge.py --shapes smollm2-135m --methods exact,svd,linear --repeat 3

The adapters' safetensors are written straight from the models' linear-layer
shapes (q/k/v/o/gate/up/down of every layer, PEFT's key names) with random
non-zero factors, so no model is instantiated: a 1.5B-shaped merge needs only
the adapters' own memory. Each timing covers the whole `merge_adapters` call:
load the sources, check them, merge, measure the error from the factors, save.
Results go in BENCHMARKS.md, "Merge".
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

SHAPES = {
    # HuggingFaceTB/SmolLM2-135M: hidden 576, 30 layers, MLP 1536, 9 heads / 3 KV heads (head dim 64).
    "smollm2-135m": {"hidden": 576, "layers": 30, "intermediate": 1536, "heads": 9, "kv_heads": 3},
    # Qwen/Qwen2.5-1.5B: hidden 1536, 28 layers, MLP 8960, 12 heads / 2 KV heads (head dim 128).
    "qwen2.5-1.5b": {"hidden": 1536, "layers": 28, "intermediate": 8960, "heads": 12, "kv_heads": 2},
}


def linear_shapes(hidden: int, layers: int, intermediate: int, heads: int, kv_heads: int) -> dict[str, tuple[int, int]]:
    """module name -> (out_features, in_features) of every linear layer PEFT's all-linear targets."""
    kv = kv_heads * (hidden // heads)
    per_layer = {
        "self_attn.q_proj": (hidden, hidden),
        "self_attn.k_proj": (kv, hidden),
        "self_attn.v_proj": (kv, hidden),
        "self_attn.o_proj": (hidden, hidden),
        "mlp.gate_proj": (intermediate, hidden),
        "mlp.up_proj": (intermediate, hidden),
        "mlp.down_proj": (hidden, intermediate),
    }
    return {f"model.layers.{i}.{name}": shape for i in range(layers) for name, shape in per_layer.items()}


def write_adapter(
    folder: Path,
    shapes: dict[str, tuple[int, int]],
    r: int,
    alpha: int,
    seed: int,
    base: str = "bench/base",
    use_rslora: bool = False,
    train_examples: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """A PEFT LoRA adapter folder with random factors (B non-zero, as if trained), written without a model."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (out_f, in_f) in shapes.items():
        key = f"base_model.model.{module}"
        # Kaiming-like A and a B of the size training reaches: updates of a realistic relative scale.
        tensors[f"{key}.lora_A.weight"] = (torch.randn(r, in_f, generator=gen) / in_f**0.5).to(dtype)
        tensors[f"{key}.lora_B.weight"] = (torch.randn(out_f, r, generator=gen) * 0.01).to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    targets = sorted({m.rsplit(".", 1)[-1] for m in shapes})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "revision": None,
        "r": r,
        "lora_alpha": alpha,
        "use_rslora": use_rslora,
        "target_modules": targets,
        "bias": "none",
        "use_dora": False,
        "lora_dropout": 0.0,
        "fan_in_fan_out": False,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    if train_examples is not None:
        (folder / "kit_adapter.json").write_text(json.dumps({"train_examples": train_examples, "revision": "main"}))
    return folder


def main(argv: list[str] | None = None) -> list[dict]:
    from kit.merge import merge_adapters

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated, from {', '.join(SHAPES)}")
    p.add_argument("--methods", default="exact,svd", help="comma-separated: exact, svd, linear")
    p.add_argument("--adapters", type=int, default=6)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--svd-rank", type=int, default=16, help="target rank of the svd method")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per case (the median is reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(
        f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="kit-bench-merge-") as tmp:
        for shape_name in args.shapes.split(","):
            shapes = linear_shapes(**SHAPES[shape_name])
            sources = [
                write_adapter(Path(tmp) / shape_name / f"a{i}", shapes, args.rank, 2 * args.rank, seed=i)
                for i in range(args.adapters)
            ]
            size = sum((s / "adapter_model.safetensors").stat().st_size for s in sources)
            for method in args.methods.split(","):
                times, record = [], None
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    record = merge_adapters(
                        sources,
                        Path(tmp) / "out" / f"{shape_name}-{method}",
                        method=method,
                        rank=args.svd_rank if method == "svd" else None,
                    )
                    times.append(time.perf_counter() - start)
                row = {
                    "shape": shape_name,
                    "method": method,
                    "modules": record["modules"],
                    "rank": record["rank"],
                    "adapters_mb": round(size / 2**20, 1),
                    "seconds": round(statistics.median(times), 2),
                    "relative_error": float(f"{record['relative_error']:.3g}"),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


if __name__ == "__main__":
    main()
