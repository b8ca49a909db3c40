"""Merge shard adapters into one: exact by default, compressed or baseline on request.

    python -m kit merge runs/demo/shard-00 runs/demo/shard-01 --strategy average --out merged/
    merge_adapters(["runs/demo/shard-00", "runs/demo/shard-01"], "merged/", method="exact")

Owns the math and the files: finding an adapter from a SOURCE, the compatibility
check, the weights, the four methods, the error report. Choosing *which*
adapters to merge (best, greedy) and scoring them lives in kit/compare.py.

A LoRA adapter changes each target weight by dW = s * B @ A (s = alpha / r, or
alpha / sqrt(r) with rsLoRA). The weighted average of N adapters is
dW* = sum_i w_i s_i B_i A_i with the weights normalised to sum to 1. Methods:

- exact (default): concatenate the factors,

      A = [A_1; A_2; ...; A_N]          (rank r_1 + ... + r_N)
      B = [w_1 s_1 B_1, ..., w_N s_N B_N]

  saved with scaling 1 (alpha = r), so B @ A == dW* exactly (PEFT's `cat`). Mixed
  ranks, alphas and rsLoRA are all fine; the rank grows with N.
- full: dW* added to the base weights in fp32 and saved as a full model (+ tokenizer).
- svd: dW* truncated to rank R per module. dW* = B A is factored through QR of B
  and A^T, so only (sum r_i)^2-sized matrices are decomposed, never d x d ones;
  the relative Frobenius error and the retained energy are reported.
- linear: PEFT's factor averaging, A = sum sqrt(w_i) s_i A_i, B = sum sqrt(w_i) B_i.
  It is NOT the average of the updates (cross terms B_i A_j; with a shared A init
  it gives about N times the update). Kept only as a labelled baseline, with its
  error reported like svd's.

Negative weights are allowed (task arithmetic: "subtract what shard 3 taught")
as long as the weights don't sum to 0; they are divided by their sum, so
--weights 2,-1 means 2*dW_1 - 1*dW_2. `linear` applies sqrt(|w|) with w's sign on B.

Every error is computed from the factors: ||B1 A1 - B2 A2||_F^2 is a sum of
products of two small Gram matrices, in float64, so no d x d matrix is formed.

Tests: `.venv/bin/python -m pytest -q tests/test_merge*.py` (seconds, no network).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kit.errors import MergeError
from kit.files import read_json, write_json_atomic
from kit.layout import (
    ADAPTER_CONFIG,
    ADAPTER_DIR,
    ADAPTER_INFO,
    ADAPTER_WEIGHTS,
    MERGE_INFO,
    MERGE_REPORT,
    METRICS,
    adapter_label,
    cache_folder,
    shard_dirs,
    shard_index,
)

METHODS = ("exact", "full", "svd", "linear")
PEFT_PREFIX = "base_model.model."

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (A: r x in, B: out x r)


@dataclass
class Adapter:
    """One source adapter, loaded: its label, PEFT config, kit info and LoRA factors."""

    name: str
    path: Path
    config: dict
    factors: Factors
    info: dict = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return self.config["r"]

    @property
    def scaling(self) -> float:
        return scaling(self.config)


def resolve_adapter_dir(source: str | Path) -> Path:
    """The adapter folder a SOURCE names: a shard folder (with adapter/ inside) or an adapter folder.

    The one place a SOURCE becomes a local folder: `hf://USER/REPO/shard-00` (or `.../adapter`)
    downloads just that adapter folder into $KIT_CACHE/adapters/.
    """
    from kit.remote import is_hub

    path = _download_hub_adapter(str(source)) if is_hub(source) else Path(source)
    for candidate in (path, path / ADAPTER_DIR):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise MergeError(
        f"{source}: no {ADAPTER_CONFIG} here or in {path / ADAPTER_DIR}; pass a shard folder whose training is done "
        "(it holds adapter/) or an adapter folder"
    )


def check_merge_destination(out: str | Path, adapter_dirs: list[Path], overwrite: bool = False) -> None:
    """Refuse an --out that would overwrite what training saved, before anything is scored or written.

    Refused: a folder that is, or lies inside, a source's adapter folder, its shard folder
    (shard-II/) or its run folder (the shard folder's parent), where a merged adapter would
    replace a trained one or be picked up later as a shard's; and a non-empty folder that is
    not an earlier merge output (no merge_report.json), unless `overwrite`."""
    target = Path(out).resolve()
    protected: dict[Path, str] = {}
    for adapter in (Path(a).resolve() for a in adapter_dirs):
        protected.setdefault(adapter, "a source adapter")
        shard = adapter.parent if adapter.name == ADAPTER_DIR else adapter
        if shard_index(shard.name) is not None:
            protected.setdefault(shard, "a source's shard folder")
            protected.setdefault(shard.parent, "the run folder of a source")
    for folder, what in protected.items():
        if target == folder or folder in target.parents:
            where = "is" if target == folder else "lies inside"
            raise MergeError(
                f"out={str(out)!r} {where} {what} ({folder}): the merge would overwrite or mix with "
                "what training saved there. Choose a folder outside the run, e.g. out='merged/'",
                param="out",
            )
    if target.is_dir() and any(target.iterdir()) and not (target / MERGE_REPORT).is_file() and not overwrite:
        raise MergeError(
            f"out={str(out)!r} holds other files and is not an earlier merge output (no {MERGE_REPORT}): "
            "choose a new or empty folder, or set overwrite to write into it anyway",
            param=("out", "overwrite"),
        )


def _download_hub_adapter(source: str) -> Path:
    """Fetch only the adapter's files (not the shard's checkpoints) of an hf:// SOURCE."""
    from kit.remote import open_remote, parse_hub, split_hub_path

    repo, sub = split_hub_path(source)
    remote = open_remote(repo)
    candidates = [f"{sub}/{ADAPTER_DIR}", sub] if sub else [ADAPTER_DIR, ""]
    for folder in candidates:
        prefix = f"{folder}/" if folder else ""
        listing = remote.list_files(folder)
        if f"{prefix}{ADAPTER_CONFIG}" in listing:
            local = cache_folder("adapters", parse_hub(repo)[1])
            files = [f for f in listing if f.startswith(prefix) and "/" not in f[len(prefix) :]]
            remote.download(files, local)
            return local / folder
    raise MergeError(
        f"{source}: no {ADAPTER_CONFIG} in {sub or 'the repo root'} or its adapter/ folder on the Hub; "
        "is that shard done? (`python -m kit status` shows it)"
    )


def find_shard_adapters(run: str | Path) -> list[Path]:
    """The finished adapters of a run folder, shard by shard: RUN/shard-II/adapter."""
    found = [d / ADAPTER_DIR for d in shard_dirs(run) if (d / ADAPTER_DIR / ADAPTER_CONFIG).is_file()]
    if not found:
        raise MergeError(
            f"{run}: no finished shard (shard-II/adapter/); train the shards first, or pass adapter folders"
        )
    return found


def scaling(config: dict) -> float:
    r, alpha = config["r"], config["lora_alpha"]
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def _lora_pairs(weights: dict[str, torch.Tensor], name: str) -> Factors:
    """module -> (A, B) from PEFT's saved keys `<module>.lora_A.weight` / `.lora_B.weight`."""
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


def load_adapters(sources: list) -> list[Adapter]:
    """Resolve and load every SOURCE (already-loaded Adapters pass through); labels are made unique."""
    if not sources:
        raise MergeError("no adapters to merge: pass at least one SOURCE")
    adapters, seen, given = [], {}, {}
    for source in sources:
        if isinstance(source, Adapter):
            adapters.append(source)
            continue
        path = resolve_adapter_dir(source)
        if path.resolve() in given:
            raise MergeError(
                f"{source} and {given[path.resolve()]} are the same adapter ({path}): given twice it would count "
                "twice in the average. Give each source once, and weights (strategy='weighted') to weigh one more",
                param=("sources", "weights"),
            )
        given[path.resolve()] = source
        name = adapter_label(path)
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}-{seen[name]}"  # two folders called `adapter-x` still get two table rows
        config = json.loads((path / ADAPTER_CONFIG).read_text())
        weights = load_file(str(path / ADAPTER_WEIGHTS)) if config.get("peft_type") == "LORA" else {}
        adapters.append(Adapter(name, path, config, _lora_pairs(weights, name), read_json(path / ADAPTER_INFO, {})))
    return adapters


def check_rank(adapters: list[Adapter], method: str, rank: int | None) -> list[str]:
    """Refuse a rank below 1; return a note where the rank asked for is ignored or clamped."""
    if rank is None:
        return []
    if rank < 1:
        raise MergeError(f"rank={rank}: the svd rank must be at least 1", param="rank")
    if method != "svd":
        return [
            f"rank={rank} is ignored: it is the target rank of method='svd', and method={method!r} keeps every "
            "source's rank (exact: their sum)"
        ]
    total = sum(a.rank for a in adapters)
    if rank > total:
        return [
            f"rank={rank} is clamped to {total}: the exact average has rank {total} (the sum of the sources' "
            "ranks), so svd keeps all of it and is exact"
        ]
    return []


def check_compatible(adapters: list[Adapter], method: str = "exact") -> list[str]:
    """Raise MergeError listing every problem at once; return notes (differences that merge fine)."""
    if method not in METHODS:
        raise MergeError(f"method={method!r} is not one of {', '.join(METHODS)}", param="method")
    problems, notes = [], []
    first = adapters[0]
    for a in adapters:
        c = a.config
        if c.get("peft_type") != "LORA":
            problems.append(f"{a.name}: peft_type {c.get('peft_type')!r} is not LORA")
            continue
        if c.get("use_dora"):
            problems.append(
                f"{a.name}: DoRA adapters rescale each weight by a learned magnitude; their update is "
                "not B @ A, so no average of them is exact. Retrain with use_dora off to merge"
            )
        if c.get("bias", "none") != "none":
            problems.append(
                f"{a.name}: bias={c['bias']!r} trains base biases too; merging them is not supported, "
                "retrain with bias='none'"
            )
        if c.get("rank_pattern") or c.get("alpha_pattern"):
            problems.append(f"{a.name}: per-module rank_pattern/alpha_pattern is not supported by the merge yet")
        for key in ("base_model_name_or_path", "revision", "target_modules", "task_type"):
            mine, theirs = c.get(key), first.config.get(key)
            if isinstance(mine, list) or isinstance(theirs, list):
                mine, theirs = sorted(mine or []), sorted(theirs or [])
            if mine != theirs:
                problems.append(f"{a.name}: {key}={c.get(key)!r} differs from {first.name}'s {first.config.get(key)!r}")
        # kit records the base's Hub revision beside the adapter; PEFT's own field is often null.
        if a.info.get("revision", "main") != first.info.get("revision", "main"):
            problems.append(
                f"{a.name}: base revision {a.info.get('revision')!r} ({ADAPTER_INFO}) differs from "
                f"{first.name}'s {first.info.get('revision')!r}"
            )
        if first.config.get("peft_type") == "LORA" and set(a.factors) != set(first.factors):
            odd = sorted(set(a.factors) ^ set(first.factors))
            problems.append(f"{a.name}: adapts modules {odd[:3]}... that {first.name} doesn't (or the reverse)")
        bad = [m for m, (A, B) in a.factors.items() if not (torch.isfinite(A).all() and torch.isfinite(B).all())]
        if bad:
            problems.append(f"{a.name}: NaN/inf in the factors of {bad[:3]}; this adapter seems broken (retrain it)")
    for key, what in (("r", "rank"), ("lora_alpha", "lora_alpha"), ("use_rslora", "use_rslora")):
        values = {a.name: a.config.get(key) for a in adapters if a.config.get("peft_type") == "LORA"}
        if len(set(values.values())) > 1:
            if key == "r" and method == "linear":
                problems.append(
                    f"method='linear' averages factors, so it needs equal ranks; ranks are {values}. "
                    "Use method='exact' (the default) or 'svd'"
                )
            else:
                notes.append(f"mixed {what} {values}: merged exactly (each adapter's scaling goes into its B)")
    if problems:
        raise MergeError("adapters are not compatible:\n  - " + "\n  - ".join(problems))
    return notes


def normalise_weights(weights: list[float] | None, n: int) -> list[float]:
    """Weights divided by their sum (so they sum to 1); negatives allowed, a zero sum is not."""
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    if len(weights) != n:
        raise MergeError(f"{len(weights)} weights for {n} adapters: give one weight per SOURCE")
    if not all(math.isfinite(w) for w in weights):
        raise MergeError(f"weights {weights} are not all finite numbers")
    total = sum(weights)
    if total == 0:
        raise MergeError(f"the weights {weights} sum to 0: they can't be normalised; change one of them")
    return [w / total for w in weights]


def parse_weights(text: str | None) -> list[float] | None:
    """`"3,1"` -> [3.0, 1.0] (the CLI's --weights and the merge notebook's `weights`); empty -> None."""
    if not text or not str(text).strip():
        return None
    try:
        return [float(w) for w in str(text).split(",")]
    except ValueError:
        raise MergeError(f"weights={text!r}: give numbers separated by commas, e.g. '3,1'", param="weights") from None


def sample_count_weights(adapters: list[Adapter]) -> list[float]:
    """Each adapter's training examples: kit_adapter.json's train_examples, else the shard's metrics.json."""
    counts, missing = [], []
    for a in adapters:
        count = a.info.get("train_examples") or read_json(a.path.parent / METRICS, {}).get("train_examples")
        if not count:
            missing.append(a.name)
        counts.append(count)
    if missing:
        raise MergeError(
            f"no sample count for {missing} (no train_examples in {ADAPTER_INFO} or ../{METRICS}); "
            "give weights (one per source) instead",
            param="weights",
        )
    return [float(c) for c in counts]


# ---- the methods: each returns fp32 factors (A, B) per module whose B @ A is the merged update ----


def concat_factors(adapters: list[Adapter], weights: list[float]) -> Factors:
    """For each module: (A, B) with B @ A == sum_i w_i s_i B_i @ A_i, exactly."""
    merged = {}
    for module in adapters[0].factors:
        a = torch.cat([ad.factors[module][0].float() for ad in adapters], dim=0)
        b = torch.cat([w * ad.scaling * ad.factors[module][1].float() for ad, w in zip(adapters, weights)], dim=1)
        merged[module] = (a, b)
    return merged


def linear_factors(adapters: list[Adapter], weights: list[float]) -> Factors:
    """PEFT's `linear` combination (the baseline): averaged factors, not averaged updates."""
    merged = {}
    for module in adapters[0].factors:
        a = sum(math.sqrt(abs(w)) * ad.scaling * ad.factors[module][0].float() for ad, w in zip(adapters, weights))
        b = sum(math.copysign(math.sqrt(abs(w)), w) * ad.factors[module][1].float() for ad, w in zip(adapters, weights))
        merged[module] = (a, b)
    return merged


def svd_factors(exact: Factors, rank: int) -> tuple[Factors, dict[str, dict]]:
    """Best rank-`rank` approximation of each module's B @ A, and its singular-value bookkeeping.

    B = Q_b R_b and A^T = Q_a R_a, so B @ A = Q_b (R_b R_a^T) Q_a^T: the SVD of the small core
    U S V^T gives B @ A's own SVD (Q_b U) S (Q_a V)^T. sqrt(S) is split between the two
    factors so neither holds all the magnitude (kinder to fp16/bf16 storage).
    """
    out, stats = {}, {}
    for module, (a, b) in exact.items():
        a64, b64 = a.double(), b.double()
        q_b, r_b = torch.linalg.qr(b64)
        q_a, r_a = torch.linalg.qr(a64.T)
        u, s, vh = torch.linalg.svd(r_b @ r_a.T)
        keep = min(rank, s.numel())
        root = s[:keep].sqrt()
        new_b = (q_b @ u[:, :keep]) * root
        new_a = root[:, None] * (vh[:keep] @ q_a.T)
        energy = float((s**2).sum())
        stats[module] = {"rank": keep, "retained_energy": float((s[:keep] ** 2).sum()) / energy if energy else 1.0}
        out[module] = (new_a.float(), new_b.float())
    return out, stats


def _frobenius_inner(b1: torch.Tensor, a1: torch.Tensor, b2: torch.Tensor, a2: torch.Tensor) -> float:
    """<B1 A1, B2 A2>_F = sum((B1^T B2) * (A1 A2^T)): r x r matrices, never out x in."""
    return float(((b1.T @ b2) * (a1 @ a2.T)).sum())


def relative_errors(approx: Factors, exact: Factors) -> dict:
    """Per module and overall ||dW - dW*||_F / ||dW*||_F, from the factors alone (float64)."""
    per_module, err_total, norm_total = {}, 0.0, 0.0
    for module, (a_x, b_x) in exact.items():
        a_y, b_y = approx[module]
        if a_y is a_x and b_y is b_x:
            per_module[module.removeprefix(PEFT_PREFIX)] = 0.0  # the same tensors: exact by construction
            continue
        a_x, b_x, a_y, b_y = (t.double() for t in (a_x, b_x, a_y, b_y))
        norm = _frobenius_inner(b_x, a_x, b_x, a_x)
        # ||Y - X||^2 = ||Y||^2 - 2<Y, X> + ||X||^2; float64 keeps the cancellation error near 1e-16 * ||X||^2.
        diff = max(_frobenius_inner(b_y, a_y, b_y, a_y) - 2 * _frobenius_inner(b_y, a_y, b_x, a_x) + norm, 0.0)
        per_module[module.removeprefix(PEFT_PREFIX)] = math.sqrt(diff / norm) if norm else math.sqrt(diff)
        err_total, norm_total = err_total + diff, norm_total + norm
    overall = math.sqrt(err_total / norm_total) if norm_total else math.sqrt(err_total)
    return {"overall": overall, "max": max(per_module.values(), default=0.0), "per_module": per_module}


def _check_finite(factors: Factors, names: list[str]) -> None:
    for module, (a, b) in factors.items():
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise MergeError(
                f"NaNs detected in the merged weights of {module}: one of {names} seems broken "
                "(or the weights are extreme); nothing was written"
            )


# ---- writing the result ----


def save_lora(factors: Factors, config: dict, out: Path, dtype: torch.dtype) -> None:
    """A PEFT adapter with scaling 1 (alpha = r): the per-adapter scalings now live inside B."""
    rank = next(iter(factors.values()))[0].shape[0]
    config = dict(config)
    config.update(r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={})
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[f"{module}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"{module}.lora_B.weight"] = b.to(dtype).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    write_json_atomic(out / ADAPTER_CONFIG, config)


def merge_into_base(factors: Factors, base_model: str, out: Path) -> None:
    """base weights + B @ A in fp32, saved in the base's own dtype with save_pretrained, tokenizer beside."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    # Read from the config before loading: from_pretrained(dtype=float32) sets model.config.dtype to float32.
    stored = getattr(AutoConfig.from_pretrained(base_model), "dtype", None) or torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    stored = getattr(torch, stored) if isinstance(stored, str) else stored
    with torch.no_grad():
        for module, (a, b) in factors.items():
            weight = model.get_submodule(module.removeprefix(PEFT_PREFIX)).weight
            merged = weight.float() + b.float() @ a.float()
            if not torch.isfinite(merged).all():
                raise MergeError(f"NaNs detected in the merged weights of {module}; nothing was written")
            weight.copy_(merged)
    out.mkdir(parents=True, exist_ok=True)
    model.to(stored).save_pretrained(out)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(out)


def merge_adapters(
    sources: list,
    out: str | Path,
    weights: list[float] | None = None,
    method: str = "exact",
    rank: int | None = None,
    base_model: str | None = None,
) -> dict:
    """Weighted average of the sources' updates by `method`, written to `out`; returns the merge record.

    Nothing is written until every check has passed. `rank` is svd's target rank (default:
    the largest source rank); `base_model` is where `full` loads the base (default: the
    adapters' base_model_name_or_path).
    """
    adapters = load_adapters(sources)
    notes = check_compatible(adapters, method) + check_rank(adapters, method, rank)
    norm = normalise_weights(weights, len(adapters))
    names = [a.name for a in adapters]
    exact = concat_factors(adapters, norm)
    svd_stats = None
    if method == "svd":
        rank = min(rank or max(a.rank for a in adapters), sum(a.rank for a in adapters))
        result, svd_stats = svd_factors(exact, rank)
    elif method == "linear":
        result = linear_factors(adapters, norm)
    else:
        result = exact
    _check_finite(result, names)

    dtype = next(iter(adapters[0].factors.values()))[0].dtype
    out = Path(out)
    base = base_model or adapters[0].config.get("base_model_name_or_path")
    if method == "full":
        merge_into_base(result, base, out)
    else:
        save_lora(result, adapters[0].config, out, dtype)
    # Measured on what was written (after the cast to the adapters' dtype), against dW* in fp32.
    # (.to is a no-op returning the same tensor for fp32 adapters, which relative_errors short-cuts.)
    stored = result if method == "full" else {m: (a.to(dtype), b.to(dtype)) for m, (a, b) in result.items()}
    errors = relative_errors(stored, exact)
    record = {
        "strategy": "average" if len(set(norm)) == 1 else "weighted",
        "method": method,
        "sources": [str(a.path) for a in adapters],
        "names": names,
        "weights": norm,
        "rank": None if method == "full" else next(iter(result.values()))[0].shape[0],
        "source_ranks": [a.rank for a in adapters],
        "modules": len(result),
        "base_model": base,
        "notes": notes,
        "relative_error": errors["overall"],
        "max_module_error": errors["max"],
        "module_errors": errors["per_module"],
    }
    if svd_stats is not None:
        energy = [s["retained_energy"] for s in svd_stats.values()]
        record["retained_energy"] = {
            "min": min(energy),
            "mean": sum(energy) / len(energy),
            "per_module": {m.removeprefix(PEFT_PREFIX): s["retained_energy"] for m, s in svd_stats.items()},
        }
    write_json_atomic(out / MERGE_INFO, record)
    return record
