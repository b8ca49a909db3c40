"""Model cards: the README.md the Hub shows for a shard's adapter, a merge, and a run repo's root.

    card = render_model_card(
        {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "library_name": "peft", "tags": ["lora"]},
        title="kit shard 3 adapter",
        sections=[("Metrics", "| metric | value |\\n|---|---|\\n| eval_loss | 1.23 |")],
        results=eval_results({"eval_loss": 1.23, "json_valid_rate": 0.9}, dataset="me/data"),
    )
    run_card(fleet, merges, repo_id="me/run", config=shard_config)   # the run repo's root README.md

The front matter is `huggingface_hub.ModelCardData`'s (so the Hub reads
base_model, library_name, pipeline_tag, tags, datasets, and the eval results as
a model-index); each section is `## heading` + markdown. `base_model` is a Hub
id or absent, never a local folder: `hub_base_model` takes `model.hub_id`, or
`model.name_or_path` when it is a Hub id. Cards are public-facing text: callers
pass metrics and config, never secrets, and `render_model_card` refuses any
string that looks like a Hub token.

Tested by tests/test_model_card.py and tests/test_remote.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from kit.errors import SecretInOutputError
from kit.layout import ADAPTER_DIR, ShardPaths, shard_name

# Hub user tokens start with hf_; a card holding one would publish it.
_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{20,}")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PIPELINE_TAG = "text-generation"


def hub_base_model(config: dict) -> str | None:
    """The base model as a Hub id: `model.hub_id`, else `model.name_or_path` if it is one; None for a local folder."""
    model = config.get("model", {})
    if model.get("hub_id"):
        return model["hub_id"]
    name = str(model.get("name_or_path") or "")
    looks_local = name.startswith(("/", ".", "~", "$")) or "${" in name or Path(name).exists()
    return name if _HUB_ID.fullmatch(name) and not looks_local else None


def eval_results(scores: dict, dataset: str | None = None):
    """huggingface_hub EvalResults (the card's model-index) from kit's scores: eval loss, JSON validity."""
    from huggingface_hub import EvalResult

    named = {"eval_loss": ("loss", "eval loss"), "json_valid_rate": ("json_valid_rate", "JSON validity")}
    return [
        EvalResult(
            task_type=PIPELINE_TAG,
            dataset_type=dataset or "json",
            dataset_name=f"{dataset or 'the split'}: eval split",
            dataset_split="eval",
            metric_type=kind,
            metric_name=label,
            metric_value=round(float(scores[key]), 6),
        )
        for key, (kind, label) in named.items()
        if isinstance(scores.get(key), (int, float))
    ]


def render_model_card(metadata: dict, title: str, sections: list[tuple[str, str]], results: list | None = None) -> str:
    """Front matter from `metadata` (ModelCardData's fields) and `results`, then `# title`, then the sections."""
    from huggingface_hub import ModelCard, ModelCardData

    # Drop empty values: the Hub's metadata validator rejects e.g. `datasets: [null]`.
    meta = {k: v for k, v in metadata.items() if v not in (None, "", [], {})}
    if results:
        meta.update(model_name=title, eval_results=results)
    data = ModelCardData(**meta)
    parts = [f"---\n{data.to_yaml()}\n---", f"# {title}"]
    for heading, body in sections:
        parts.append(f"## {heading}\n\n{body.strip()}")
    card = str(ModelCard("\n\n".join(parts) + "\n", ignore_metadata_errors=False))
    if _TOKEN_LIKE.search(card):
        raise SecretInOutputError("refusing to render a model card that contains something shaped like an HF token")
    return card


def prompt_section(recipe: str | None) -> list[tuple[str, str]]:
    """The "How to prompt" section from a run's inference recipe (kit/data/prompts.py); none without one."""
    return [("How to prompt", recipe[0].upper() + recipe[1:])] if recipe else []


def markdown_table(rows: dict) -> str:
    """A two-column `| key | value |` table; floats get 4 significant decimals."""
    lines = ["| key | value |", "| --- | --- |"]
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        lines.append(f"| {key} | {value} |")
    return "\n".join(lines)


def load_snippet(base: str | None, repo_id: str | None, subfolder: str | None) -> str:
    where = f", subfolder={subfolder!r}" if subfolder else ""
    return (
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f"base = AutoModelForCausalLM.from_pretrained({base or 'BASE_MODEL'!r})\n"
        f"model = PeftModel.from_pretrained(base, {repo_id or 'REPO'!r}{where})\n"
        "```"
    )


def shard_adapter_card(metrics: dict, config: dict, repo_id: str | None, shard: int, dataset: str | None = None) -> str:
    """The card pushed with `shard-II/adapter/`: what it is, how it scored, how it was trained, how to load it."""
    base = hub_base_model(config)
    metric_rows = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    title = f"kit LoRA adapter, shard {shard}"
    return render_model_card(
        {
            "base_model": base,
            "library_name": "peft",
            "pipeline_tag": PIPELINE_TAG,
            "tags": ["kit", "lora", "sft", shard_name(shard)],
            "datasets": [dataset] if dataset else None,
        },
        title=title,
        sections=[
            (
                "Shard",
                f"Trained by kit on shard {shard} only"
                + (f" of `{dataset}`" if dataset else "")
                + "; merge the shard adapters with `python -m kit merge`."
                + ("" if base else f" Base model: the local folder `{config.get('model', {}).get('name_or_path')}`."),
            ),
            ("Metrics", markdown_table(metric_rows)),
            *prompt_section(metrics.get("prompt_recipe")),
            ("Training config", f"```json\n{json.dumps(config, indent=2, sort_keys=True)}\n```"),
            ("How to load", load_snippet(base, repo_id, str(ShardPaths.in_repo(shard).adapter))),
        ],
        results=eval_results(metrics, dataset),
    )


def _cell(value, fmt: str = "{:.4f}") -> str:
    return "—" if value is None else fmt.format(value)


def run_card(fleet: dict, merges: dict[str, dict], repo_id: str, config: dict, dataset: str | None = None) -> str:
    """The run repo's root README.md: every shard's row (from kit/status.py's fleet), links to each
    shard's adapter, and every merge found in the repo (folder -> its merge_report.json)."""
    # Root-relative links: a card's relative link resolves against the repo page, one folder too high.
    tree = f"/{repo_id}/tree/main"
    rows = ["| shard | state | steps | eval loss | JSON validity | where it ran | adapter |", "|---" * 7 + "|"]
    for row in fleet["shards"]:
        name = shard_name(row["shard"])
        steps = f"{row['step'] or 0}/{row['max_steps'] or '?'}"
        link = f"[{name}/{ADAPTER_DIR}]({tree}/{name}/{ADAPTER_DIR})" if row["state"] == "done" else "—"
        rows.append(
            f"| {name} | {row['state']} | {steps} | {_cell(row.get('eval_loss'))} | "
            f"{_cell(row.get('json_valid_rate'), '{:.1%}')} | {row.get('platform') or '—'} | {link} |"
        )
    totals = fleet["totals"]
    states = ", ".join(f"{n} {s}" for s, n in sorted(totals["by_state"].items()))
    sections = [
        (
            "Shards",
            f"{totals['shards']} shards ({states}); {totals['tokens_trained']:,} tokens trained. Refreshed with "
            "each shard's final push and each merge; `python -m kit status hf://"
            f"{repo_id}` shows the live state.\n\n" + "\n".join(rows),
        )
    ]
    best = None
    if merges:
        lines = ["| merge | strategy | method | chosen | eval loss | JSON validity |", "|---" * 6 + "|"]
        for folder, report in sorted(merges.items()):
            scores = (report.get("results") or {}).get(report.get("chosen"), {})
            lines.append(
                f"| [{folder}]({tree}/{folder}) | {report.get('strategy')} | {report.get('merge', {}).get('method')} | "
                f"{report.get('chosen')} | {_cell(scores.get('eval_loss'))} | "
                f"{_cell(scores.get('json_valid_rate'), '{:.1%}')} |"
            )
            if scores.get("eval_loss") is not None and (best is None or scores["eval_loss"] < best[1]["eval_loss"]):
                best = (folder, scores)
        sections.append(("Merges", "\n".join(lines)))
    base = hub_base_model(config)
    done = [r for r in fleet["shards"] if r["state"] == "done"]
    subfolder = best[0] if best else (f"{shard_name(done[0]['shard'])}/{ADAPTER_DIR}" if done else None)
    sections.append(("How to load", load_snippet(base, repo_id, subfolder)))
    return render_model_card(
        {
            "base_model": base,
            "library_name": "peft",
            "pipeline_tag": PIPELINE_TAG,
            "tags": ["kit", "lora", "sft"],
            "datasets": [dataset] if dataset else None,
        },
        title=f"kit run {repo_id}",
        sections=sections,
        results=eval_results(best[1], dataset) if best else None,
    )
