"""Choose what to merge, score every candidate side by side, and write the merge with its report and card.

    evaluator = adapter_evaluator(eval_config("cpu-tiny", [], sources), "shards/", schema=load_schema("s.json"))
    report = merge_and_compare(sources, "merged/", strategy="greedy", evaluator=evaluator)
    print(format_scores(report["results"]))
    python -m kit merge runs/x/shard-00 runs/x/shard-01 --strategy best --eval-data shards/ --out merged/

Strategies (the math of each merge is kit/merge.py's):
- average / weighted: one candidate, the (weighted) average of all sources.
- best: no merge; the one source picked by BEST_RULE.
- greedy (model soups, Wortsman et al. 2022): GREEDY_RULE.

With an evaluator, the base model, every source and every merge candidate are
scored on the same eval split (eval loss, JSON validity rate, schema validity
rate with a schema); the table goes to DEST/merge_report.json and the model card.
Adapters trained on a 4-bit base are scored on it and on the full-precision
base (BothBasesEvaluator); both sets of numbers land in the report.
An evaluator is any `f(label, adapter_dir | None) -> {"eval_loss": ..., ...}`
(None = the base model), so tests inject scores without loading a model.

Tests: `.venv/bin/python -m pytest -q tests/test_compare.py` (seconds, no network).
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from kit.errors import MergeError
from kit.files import read_json, write_json_atomic, write_text_atomic
from kit.layout import ADAPTER_CONFIG, ADAPTER_INFO, EVAL_FILE, MERGE_REPORT, MODEL_CARD, cache_folder
from kit.merge import (
    Adapter,
    check_compatible,
    check_merge_destination,
    check_rank,
    load_adapters,
    merge_adapters,
    resolve_adapter_dir,
    sample_count_weights,
)
from kit.remote import is_hub, open_remote_for_push, parse_hub, split_hub_path
from kit.tables import text_table

STRATEGIES = ("average", "weighted", "best", "greedy")
METRICS = ("eval_loss", "json_valid_rate")
DEFAULT_TOLERANCE = 0.01
BEST_RULE = (
    "lowest eval loss; sources within {tolerance} nats of the lowest are near-ties, broken by the "
    "higher JSON validity rate (then schema validity rate, then the lower loss)"
)
GREEDY_RULE = (
    "sources sorted by eval loss, lowest first; each next source joins the uniform average only if "
    "the average's eval loss drops"
)

Evaluator = Callable[[str, "Path | None"], dict]


# ---- scoring ----


def load_schema(path: str | Path) -> dict:
    """A JSON Schema file, checked against its own draft so a typo fails before any evaluation."""
    import jsonschema

    try:
        schema = json.loads(Path(path).read_text())
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except (OSError, json.JSONDecodeError, jsonschema.SchemaError) as e:
        raise MergeError(
            f"schema={str(path)!r}: not a readable JSON Schema ({str(e).splitlines()[0]})", param="schema"
        ) from e
    return schema


def eval_config(preset: str | None, overrides: list[str], sources: list):
    """The run config scoring uses: the preset's, or (no preset) defaults on the adapters' own base model."""
    import yaml

    from kit.config import load_config

    first = resolve_adapter_dir(sources[0])
    base = json.loads((first / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    # kit_adapter.json (kit/train.py) records the base's quantization: 4-bit-trained adapters are scored on 4 bit too.
    quantize = (read_json(first / ADAPTER_INFO, default={}) or {}).get("quantize") or "none"
    if preset:
        cfg = load_config(preset, overrides)
        if base and cfg.resolved_model_path() != base:
            # Paths differ between machines (a Colab cache vs a local folder), so this is a warning, not an error.
            print(
                f"warning: scoring on {cfg.resolved_model_path()} but the adapters were trained on {base}",
                file=sys.stderr,
            )
        return cfg
    # No preset: the defaults, on the adapters' base, with the overrides checked like any preset's.
    with tempfile.TemporaryDirectory(prefix="kit-eval-") as tmp:
        preset_file = Path(tmp) / "adapters-base.yaml"
        preset_file.write_text(yaml.safe_dump({"model": {"name_or_path": base, "quantize": quantize}}))
        cfg = load_config(str(preset_file), overrides)
    cfg.preset = "(the adapters' base model)"
    return cfg


class AdapterEvaluator:
    """Scores the base and any adapter on one eval split: the base is loaded once, adapters attach via PEFT."""

    def __init__(self, cfg, eval_data: str | Path, schema: dict | None = None):
        from kit.data.records import read_jsonl
        from kit.data.shards import load_eval

        self.cfg, self.schema, self.eval_data = cfg, schema, str(eval_data)
        # A split folder (checked against its manifest) or a bare eval JSONL file.
        self.records = read_jsonl(eval_data) if Path(eval_data).is_file() else load_eval(eval_data)
        self.model = self.tokenizer = None
        self.loaded = 0
        self.on_batch = None  # called after each eval batch: the merge's progress bar (Chooser)

    def batches_per_model(self) -> int:
        """Eval batches one model's scoring runs (generation + loss): the progress bar's unit."""
        from kit.evaluate import eval_batches
        from kit.model import load_tokenizer

        self.tokenizer = self.tokenizer or load_tokenizer(self.cfg)
        return eval_batches(self.tokenizer, self.records, self.cfg.eval, self.cfg.data.max_length, self.cfg.data.turns)

    def __call__(self, label: str, adapter_dir: Path | None) -> dict:
        from kit.evaluate import evaluate_model
        from kit.model import load_base_model, load_tokenizer

        if self.model is None:
            self.tokenizer, self.model = self.tokenizer or load_tokenizer(self.cfg), load_base_model(self.cfg)
        score = lambda: evaluate_model(  # noqa: E731
            self.model,
            self.tokenizer,
            self.records,
            self.cfg.eval,
            self.cfg.data.max_length,
            self.schema,
            turns=self.cfg.data.turns,
            on_batch=self.on_batch,
        )
        if adapter_dir is None:
            if self.loaded == 0:
                return score()
            with self.model.disable_adapter():
                return score()
        # PEFT adapter names can't hold dots or slashes, so labels stay out of them.
        name = f"candidate{self.loaded}"
        if self.loaded == 0:
            from peft import PeftModel

            self.model = PeftModel.from_pretrained(self.model, str(adapter_dir), adapter_name=name)
        else:
            self.model.load_adapter(str(adapter_dir), adapter_name=name)
        self.loaded += 1
        self.model.set_adapter(name)
        return score()


FULL_BASE = "_full_base"  # suffix of the scores a 4-bit-trained adapter gets on the full-precision base


class BothBasesEvaluator:
    """Adapters trained on a 4-bit base, scored on it and on the same base in full precision.

    The 4-bit scores come first and are the ones `best` and `greedy` pick by: they are
    what training measured. The full-precision ones (keys ending in `_full_base`) are
    what a merged model served without bitsandbytes gives; the two differ by the
    quantization error, and the report shows both side by side."""

    def __init__(self, cfg, eval_data: str | Path, schema: dict | None = None):
        import copy

        full = copy.deepcopy(cfg)
        full.model.quantize = "none"
        self.quantized = AdapterEvaluator(cfg, eval_data, schema)
        self.full = AdapterEvaluator(full, eval_data, schema)

    @property
    def on_batch(self):
        return self.quantized.on_batch

    @on_batch.setter
    def on_batch(self, callback):
        self.quantized.on_batch = self.full.on_batch = callback

    def batches_per_model(self) -> int:
        return self.quantized.batches_per_model() + self.full.batches_per_model()

    def __call__(self, label: str, adapter_dir: Path | None) -> dict:
        row = self.quantized(label, adapter_dir)
        full = self.full(label, adapter_dir)
        row.update({f"{k}{FULL_BASE}": full[k] for k in (*METRICS, "schema_valid_rate") if k in full})
        return row


def adapter_evaluator(cfg, eval_data: str | Path, schema: dict | None = None):
    """The evaluator for this scoring config: on a 4-bit base, one that scores on both bases."""
    from kit.platform import resolve_platform

    resolve_platform(cfg, verbose=False)
    return (BothBasesEvaluator if cfg.model.load_in_4bit else AdapterEvaluator)(cfg, eval_data, schema)


def pick_best(rows: dict[str, dict], tolerance: float = DEFAULT_TOLERANCE) -> str:
    """BEST_RULE over `rows` (label -> scores)."""
    lowest = min(r["eval_loss"] for r in rows.values())
    near = [name for name, r in rows.items() if r["eval_loss"] <= lowest + tolerance]
    return max(
        near,
        key=lambda n: (
            rows[n].get("json_valid_rate", 0.0),
            rows[n].get("schema_valid_rate", 0.0),
            -rows[n]["eval_loss"],
        ),
    )


# ---- the strategies ----


def merge_and_compare(
    sources: list,
    out: str | Path,
    strategy: str = "average",
    weights: list[float] | None = None,
    method: str = "exact",
    rank: int | None = None,
    evaluator: Evaluator | None = None,
    base_model: str | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    eval_data: str | None = None,
    schema: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Pick and merge by `strategy`, score everything, write DEST (+ merge_report.json, README.md).

    The steps: check the request, find where to write (a Hub DEST merges in the cache, then
    pushes), load and check the sources, choose by scoring (`Chooser`), write the merge and its
    report, push. A local DEST that is a source's adapter, shard or run folder, or a non-empty
    folder that is no earlier merge output (unless `overwrite`), is refused before anything is
    scored (merge.check_merge_destination)."""
    check_request(strategy, weights, evaluator)
    local, push_to = merge_destination(out)  # a Hub DEST: the token is checked now, before any work
    adapters = load_adapters(sources)
    notes = check_compatible(adapters, method) + check_rank(adapters, method, rank)  # every refusal, before any work
    if push_to is None:
        check_merge_destination(local, [a.path for a in adapters], overwrite)
    if strategy == "weighted" and weights is None:
        weights = sample_count_weights(adapters)

    chooser = Chooser(adapters, evaluator, method, rank)
    chosen, final, final_weights = chooser.choose(strategy, weights, tolerance)
    record = merge_adapters(final, local, final_weights, method, rank, base_model)
    record["strategy"] = strategy
    report = {
        "strategy": strategy,
        "rule": {"best": BEST_RULE.format(tolerance=tolerance), "greedy": GREEDY_RULE}.get(strategy),
        "method": method,
        "chosen": chosen,
        "merge": record,
        "sources": [_describe(a) for a in adapters],
        "compatibility_notes": notes,
        "eval_data": eval_data,
        "schema": schema,
        "evaluated_as": "the exact adapter (same logits as the full model)" if method == "full" else method,
        "greedy_steps": chooser.steps,
        "results": chooser.results,
        # The shards share base and template, so one recipe; the first source that recorded one.
        "prompt_recipe": next((a.info["prompt_recipe"] for a in adapters if a.info.get("prompt_recipe")), None),
        "hub_id": next((a.info["hub_id"] for a in adapters if a.info.get("hub_id")), None),
    }
    write_json_atomic(local / MERGE_REPORT, report)
    write_text_atomic(local / MODEL_CARD, merge_card(report))
    if push_to:
        remote, folder = push_to
        remote.ensure_exists(private=True)
        remote.commit_folder(local, folder, f"kit merge: {strategy} ({method}) of {len(adapters)} adapters")
        report["pushed_to"] = str(out)
        print(f"pushed the merged adapter to {out}")
        from kit.sync import refresh_run_card

        if refresh_run_card(remote, eval_data):  # a merge into its run's repo: the root card lists it
            print(f"refreshed {remote.location}'s root {MODEL_CARD} (shards and merges)")
    return report


def check_request(strategy: str, weights, evaluator) -> None:
    """The strategy exists, has the scores it picks by, and gets weights only where they mean something."""
    if strategy not in STRATEGIES:
        raise MergeError(f"strategy={strategy!r} is not one of {', '.join(STRATEGIES)}", param="strategy")
    if strategy in ("best", "greedy") and evaluator is None:
        raise MergeError(
            f"strategy={strategy!r} picks by eval scores: give eval_data (the split folder with {EVAL_FILE})",
            param="eval_data",
        )
    if weights is not None and strategy != "weighted":
        raise MergeError(
            f"weights apply to strategy='weighted', not {strategy!r}: leave weights empty", param="weights"
        )


def merge_destination(out: str | Path) -> tuple[Path, tuple | None]:
    """(the local folder to write, (remote, folder) to push it to or None). A Hub DEST is merged in
    $KIT_CACHE/merged/USER--REPO--FOLDER first; its token is checked here."""
    if not is_hub(out):
        return Path(out), None
    repo, folder = split_hub_path(str(out))
    remote = open_remote_for_push(repo, "push the merged adapter")
    return cache_folder("merged", parse_hub(repo)[1], folder), (remote, folder)


class Chooser:
    """Scores the base, every source and every candidate merge, and picks what to merge by strategy.

    `results` (label -> scores) and `steps` (greedy's accept/reject log) are what the report shows.
    Without an evaluator nothing is scored and only average/weighted can be chosen."""

    def __init__(self, adapters: list[Adapter], evaluator: Evaluator | None, method: str, rank: int | None):
        self.adapters, self.evaluator, self.rank = adapters, evaluator, rank
        self.method = "exact" if method == "full" else method  # `full` has the exact adapter's logits (tested)
        self.results: dict[str, dict] = {}
        self.steps: list[dict] = []
        self._staging = self._progress = None
        self._models, self._per_model = 0, 1

    def choose(self, strategy: str, weights, tolerance: float) -> tuple[str, list[Adapter], list[float] | None]:
        """(label of what was chosen, the adapters to merge, their weights)."""
        extra = {"average": 1, "weighted": 1, "best": 0, "greedy": len(self.adapters) - 1}[strategy]
        with tempfile.TemporaryDirectory(prefix="kit-merge-") as staging:
            self._staging = Path(staging)
            self._models = 1 + len(self.adapters) + extra if self.evaluator else 0
            # Per eval batch where the evaluator can say how many it runs (a model takes minutes to generate).
            self._per_model = self.evaluator.batches_per_model() if hasattr(self.evaluator, "batches_per_model") else 1
            self._progress = _progress(self._models * self._per_model, "batch" if self._per_model > 1 else "model")
            if hasattr(self.evaluator, "on_batch"):
                self.evaluator.on_batch = lambda: self._progress.update(1)
            try:
                if self.evaluator:
                    self.score("base", None)
                    for a in self.adapters:
                        self.score(a.name, a.path)
                if strategy in ("average", "weighted"):
                    if self.evaluator:
                        self.candidate("merged", self.adapters, weights)
                    return "merged", self.adapters, weights
                if strategy == "best":
                    chosen = pick_best({a.name: self.results[a.name] for a in self.adapters}, tolerance)
                    return chosen, [a for a in self.adapters if a.name == chosen], None
                return self.greedy_soup()
            finally:
                self._progress.close()

    def score(self, label: str, path: Path | None) -> dict:
        done = len(self.results)
        self._progress.set_postfix_str(f"{label} (model {done + 1}/{self._models})", refresh=True)
        self.results[label] = self.evaluator(label, path)
        # Whole models on the bar, whatever the evaluator reported: the ETA counts what is left exactly.
        short = (done + 1) * self._per_model - self._progress.n
        if short:
            self._progress.update(short)
        return self.results[label]

    def candidate(self, label: str, members: list[Adapter], member_weights) -> dict:
        """Merge `members` into a staging folder and score it."""
        folder = self._staging / f"c{len(self.steps)}-{len(self.results)}"
        merge_adapters(members, folder, member_weights, self.method, self.rank)
        return self.score(label, folder)

    def greedy_soup(self) -> tuple[str, list[Adapter], None]:
        """GREEDY_RULE: each next-best source joins the uniform average only if the average's eval loss drops."""
        order = sorted(self.adapters, key=lambda a: self.results[a.name]["eval_loss"])
        soup, current, chosen = [order[0]], self.results[order[0].name]["eval_loss"], order[0].name
        for nxt in order[1:]:
            label = "soup(" + "+".join(a.name for a in soup + [nxt]) + ")"
            loss = self.candidate(label, soup + [nxt], None)["eval_loss"]
            kept = loss < current
            self.steps.append({"candidate": label, "eval_loss": loss, "previous": current, "kept": kept})
            if kept:
                soup, current, chosen = soup + [nxt], loss, label
        return chosen, soup, None


def _describe(a: Adapter) -> dict:
    return {
        "name": a.name,
        "path": str(a.path),
        "r": a.rank,
        "lora_alpha": a.config.get("lora_alpha"),
        "use_rslora": bool(a.config.get("use_rslora")),
        "train_examples": a.info.get("train_examples"),
    }


def _progress(total: int, unit: str = "model"):
    """A tqdm bar over the evaluations, with its ETA (a silent one when nothing is scored)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluating", unit=unit, disable=total == 0)


# ---- showing it ----


def format_scores(table: dict[str, dict], extra: tuple[str, ...] = ()) -> str:
    """Fixed-width text: one row per model, eval loss and validity rates (schema column when scored)."""
    if not table:
        return "(nothing evaluated: give eval data to score the candidates)"
    columns = tuple(_score_columns(table)) + tuple(extra)
    rows = [[name] + ["—" if row.get(c) is None else f"{row[c]:.4f}" for c in columns] for name, row in table.items()]
    return "\n".join(text_table(["model", *columns], rows, right=set(range(1, len(columns) + 1))))


def _score_columns(table: dict[str, dict]) -> list[str]:
    """The score columns present: eval loss, validity rates (schema when scored), then the full-base ones."""
    names = [*METRICS, "schema_valid_rate"]
    names += [f"{n}{FULL_BASE}" for n in names]
    return [c for c in names if c in METRICS or any(c in r for r in table.values())]


def _markdown_results(table: dict[str, dict]) -> str:
    columns = [c for c in _score_columns(table) if any(c in r for r in table.values())]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in table.items():
        lines.append(
            f"| {name} | " + " | ".join("—" if row.get(c) is None else f"{row[c]:.4f}" for c in columns) + " |"
        )
    return "\n".join(lines)


def merge_card(report: dict) -> str:
    """The README.md of DEST: sources, strategy, weights, method, error and the evaluation table."""
    from kit.model_card import PIPELINE_TAG, eval_results, hub_base_model, prompt_section, render_model_card

    record = report["merge"]
    base = record.get("base_model") or ""
    # A local folder is no Hub id: the Hub's metadata validator would reject it as base_model.
    hub_base = hub_base_model({"model": {"name_or_path": base, "hub_id": report.get("hub_id")}})
    weights = dict(zip(record["names"], record["weights"]))
    rows = ["| source | path | r | alpha | rsLoRA | weight |", "|---|---|---|---|---|---|"]
    for s in report["sources"]:
        w = weights.get(s["name"])
        rows.append(
            f"| {s['name']} | `{s['path']}` | {s['r']} | {s['lora_alpha']} | {s['use_rslora']} | "
            + ("not used" if w is None else f"{w:.4f}")
            + " |"
        )
    made = [
        f"Strategy **{report['strategy']}**" + (f": {report['rule']}." if report["rule"] else "."),
        f"Chosen: **{report['chosen']}**.",
        "",
        "\n".join(rows),
    ]
    if report["greedy_steps"]:
        made += ["", "Greedy steps:"] + [
            f"- {s['candidate']}: eval loss {s['eval_loss']:.4f} vs {s['previous']:.4f} -> "
            + ("kept" if s["kept"] else "rejected")
            for s in report["greedy_steps"]
        ]
    method = [
        f"Method **{record['method']}**"
        + {
            "exact": ": factors concatenated, the update is exactly the weighted average (rank = sum of ranks).",
            "full": ": the exact average added to the base weights in fp32; a full model, not an adapter.",
            "svd": f": the exact average truncated to rank {record['rank']} per module by SVD.",
            "linear": ": PEFT-style factor averaging. A BASELINE ONLY: it is not the average of the updates.",
        }[record["method"]],
        f"Relative Frobenius error ||dW - dW*|| / ||dW*|| against the exact average: overall "
        f"{record['relative_error']:.3g}, worst module {record['max_module_error']:.3g}.",
    ]
    if "retained_energy" in record:
        method.append(
            f"Retained energy: mean {record['retained_energy']['mean']:.4f}, "
            f"min {record['retained_energy']['min']:.4f}."
        )
    method += [f"- {n}" for n in report["compatibility_notes"]]
    sections = [("How it was made", "\n".join(made)), ("Merge method and error", "\n".join(method))]
    if report["results"]:
        sections.append(
            (
                "Evaluation",
                f"On `{report['eval_data']}`"
                + (f", schema `{report['schema']}`" if report["schema"] else "")
                + f"; merge candidates evaluated as {report['evaluated_as']}.\n\n"
                + _markdown_results(report["results"]),
            )
        )
    sections += prompt_section(report.get("prompt_recipe"))
    if record["method"] != "full":
        sections.append(
            (
                "How to load",
                "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n"
                "model = PeftModel.from_pretrained(\n"
                f"    AutoModelForCausalLM.from_pretrained({hub_base or base!r}), 'PATH_OR_REPO'\n)\n```",
            )
        )
    chosen_scores = (report.get("results") or {}).get(report["chosen"], {})
    return render_model_card(
        {
            "base_model": hub_base,
            "library_name": "transformers" if record["method"] == "full" else "peft",
            "pipeline_tag": PIPELINE_TAG,
            "tags": ["kit", "lora", "merge", report["strategy"]],
        },
        results=eval_results(chosen_scores) or None,
        title=f"kit merged {'model' if record['method'] == 'full' else 'adapter'} "
        f"({report['strategy']}, {record['method']})",
        sections=sections,
    )


def plot_comparison(table: dict[str, dict], path: str | Path) -> Path | None:
    """Bar charts of eval loss and validity rates, saved as a PNG; None when matplotlib isn't installed."""
    from kit.display import optional_package

    if not optional_package("matplotlib", "the score plot (the table holds the same numbers)"):
        return None
    import matplotlib

    matplotlib.use("Agg")  # headless (papermill, CI); notebooks still display the saved PNG
    import matplotlib.pyplot as plt

    columns = [c for c in ("eval_loss", "json_valid_rate", "schema_valid_rate") if any(c in r for r in table.values())]
    fig, axes = plt.subplots(1, len(columns), figsize=(4.5 * len(columns), 0.5 * len(table) + 1.5), squeeze=False)
    names = list(table)
    for ax, column in zip(axes[0], columns):
        ax.barh(names, [table[n].get(column) or 0.0 for n in names])
        ax.set_title(column)
        ax.invert_yaxis()  # the first row (base) on top, as in the printed table
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
