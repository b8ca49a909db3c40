"""Merge shard adapters into one, exactly.

    python -m kit merge runs/demo/shard-00 runs/demo/shard-01 --strategy average --out merged/
    merge_adapters(["runs/demo/shard-00", "runs/demo/shard-01"], "merged/")

A LoRA adapter changes each target weight by dW = s * B @ A (s = alpha / r, or
alpha / sqrt(r) with rsLoRA). The average of N adapters is dW = sum_i w_i s_i B_i A_i.
Averaging the A's and the B's separately (PEFT's `linear` combination) gives
(sum w_i B_i)(sum w_i A_i) instead, which has cross terms B_i A_j and, when the
shards share their A init, about N times the intended update. So we concatenate:

    A = [A_1; A_2; ...; A_N]          (rank r_1 + ... + r_N)
    B = [w_1 s_1 B_1, ..., w_N s_N B_N]

and save with scaling 1 (alpha = r = sum r_i). Then B @ A is exactly the weighted
sum of the updates (the same construction as PEFT's `cat`), at the price of a
rank that grows with N.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kit.files import write_json_atomic

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class MergeError(ValueError):
    """The adapters can't be merged; the message lists every reason."""


def resolve_adapter_dir(source: str | Path) -> Path:
    """A shard folder (with adapter/ inside) or an adapter folder itself."""
    path = Path(source)
    for candidate in (path, path / "adapter"):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise MergeError(
        f"{source}: no {ADAPTER_CONFIG} here or in {path / 'adapter'}; pass a shard folder whose training is done "
        "(it holds adapter/) or an adapter folder"
    )


def find_shard_adapters(run: str | Path) -> list[Path]:
    """The finished adapters of a run folder, shard by shard: RUN/shard-II/adapter."""
    found = sorted(Path(run).glob("shard-[0-9][0-9]/adapter"))
    found = [p for p in found if (p / ADAPTER_CONFIG).is_file()]
    if not found:
        raise MergeError(f"{run}: no finished shard (shard-II/adapter/); train the shards first, or pass adapter folders")
    return found


def load_adapter(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    weights = load_file(str(path / ADAPTER_WEIGHTS))
    return config, weights


def scaling(config: dict) -> float:
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def check_compatible(configs: list[dict], names: list[str]) -> None:
    """All problems at once: these adapters must share a base and the same target modules."""
    problems = []
    first = configs[0]
    for name, c in zip(names, configs):
        if c.get("peft_type") != "LORA":
            problems.append(f"{name}: peft_type {c.get('peft_type')!r} is not LORA")
        if c.get("use_dora"):
            problems.append(f"{name}: DoRA adapters have a magnitude vector; their update is not B @ A and can't be merged exactly")
        if c.get("bias", "none") != "none":
            problems.append(f"{name}: bias={c['bias']!r} trains base biases, which an adapter average can't hold exactly")
        if c.get("rank_pattern") or c.get("alpha_pattern"):
            problems.append(f"{name}: per-module rank_pattern/alpha_pattern is not supported by the merge yet")
        for key in ("base_model_name_or_path", "revision", "target_modules", "task_type"):
            mine, theirs = c.get(key), first.get(key)
            if isinstance(mine, list):
                mine, theirs = sorted(mine), sorted(theirs or [])
            if mine != theirs:
                problems.append(f"{name}: {key}={c.get(key)!r} differs from {names[0]}'s {first.get(key)!r}")
    if problems:
        raise MergeError("adapters are not compatible:\n  - " + "\n  - ".join(problems))


def _lora_pairs(weights: dict[str, torch.Tensor], name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module prefix -> (A, B) from PEFT's saved keys `<module>.lora_A.weight` / `.lora_B.weight`."""
    pairs = {}
    for key in weights:
        if key.endswith(".lora_A.weight"):
            prefix = key[: -len(".lora_A.weight")]
            b_key = prefix + ".lora_B.weight"
            if b_key not in weights:
                raise MergeError(f"{name}: {key} has no matching {b_key}")
            pairs[prefix] = (weights[key], weights[b_key])
    other = [k for k in weights if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
    if other:
        raise MergeError(f"{name}: weights other than LoRA factors ({other[:3]}...) can't be merged exactly")
    return pairs


def concat_lora(
    adapters: list[dict[str, tuple[torch.Tensor, torch.Tensor]]], coefficients: list[float]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """For each module: (A, B) with B @ A == sum_i c_i B_i @ A_i, exactly (fp32 math)."""
    modules = adapters[0].keys()
    merged = {}
    for module in modules:
        dtype = adapters[0][module][0].dtype
        a = torch.cat([ad[module][0].float() for ad in adapters], dim=0)
        b = torch.cat([c * ad[module][1].float() for ad, c in zip(adapters, coefficients)], dim=1)
        merged[module] = (a.to(dtype), b.to(dtype))
    return merged


def merge_adapters(sources: list[str | Path], out: str | Path, weights: list[float] | None = None) -> dict:
    """Exact weighted average of the sources' updates, saved as one PEFT adapter in `out`."""
    if not sources:
        raise MergeError("no adapters to merge: pass at least one SOURCE")
    dirs = [resolve_adapter_dir(s) for s in sources]
    names = [str(s) for s in sources]
    loaded = [load_adapter(d) for d in dirs]
    configs = [c for c, _ in loaded]
    check_compatible(configs, names)
    weights = [1.0] * len(dirs) if weights is None else list(weights)
    if len(weights) != len(dirs):
        raise MergeError(f"{len(weights)} weights for {len(dirs)} adapters: give one weight per SOURCE")
    total = sum(weights)
    if total == 0:
        raise MergeError("the weights sum to 0: they can't be normalised")
    norm = [w / total for w in weights]
    pairs = [_lora_pairs(w, n) for (_, w), n in zip(loaded, names)]
    modules = set(pairs[0])
    for n, p in zip(names, pairs):
        if set(p) != modules:
            raise MergeError(f"{n}: adapts modules {sorted(set(p) ^ modules)[:3]}... that {names[0]} doesn't (or the reverse)")
    merged = concat_lora(pairs, [w * scaling(c) for w, c in zip(norm, configs)])

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rank = sum(c["r"] for c in configs)
    config = dict(configs[0])
    # Scaling 1: the per-adapter scalings now live inside B.
    config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={})
    tensors = {}
    for module, (a, b) in merged.items():
        tensors[f"{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{module}.lora_B.weight"] = b.contiguous()
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    write_json_atomic(out / ADAPTER_CONFIG, config)
    report = {
        "strategy": "average" if len(set(norm)) == 1 else "weighted",
        "method": "exact",
        "sources": names,
        "weights": norm,
        "rank": rank,
        "modules": len(merged),
    }
    write_json_atomic(out / "merge_info.json", report)
    return report
