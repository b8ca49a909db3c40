"""Model cards: the README.md the Hub shows for an adapter (a shard's or a merge's).

Owns one small, general renderer plus the card kit writes for a trained shard:

    card = render_model_card(
        {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "library_name": "peft", "tags": ["lora"]},
        title="kit shard 3 adapter",
        sections=[("Metrics", "| metric | value |\\n|---|---|\\n| eval_loss | 1.23 |")],
    )

`metadata` becomes the YAML front matter (the Hub reads base_model,
library_name, tags, datasets from it); each section is `## heading` + markdown.
Cards are public-facing text: callers pass metrics and config, never secrets,
and `render_model_card` refuses any string that looks like a Hub token.

Tested by tests/test_remote.py (`.venv/bin/python -m pytest -q tests/test_remote.py`).
"""

from __future__ import annotations

import json
import re

import yaml

from kit.errors import SecretInOutputError
from kit.layout import ShardPaths, shard_name

# Hub user tokens start with hf_; a card holding one would publish it.
_TOKEN_LIKE = re.compile(r"\bhf_[A-Za-z0-9]{20,}")


def render_model_card(metadata: dict, title: str, sections: list[tuple[str, str]]) -> str:
    """YAML front matter from `metadata`, then `# title`, then one `## heading` per section."""
    # Drop empty values: the Hub's metadata validator rejects e.g. `datasets: [null]`.
    meta = {k: v for k, v in metadata.items() if v not in (None, "", [], {})}
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()
    parts = [f"---\n{front}\n---", f"# {title}"]
    for heading, body in sections:
        parts.append(f"## {heading}\n\n{body.strip()}")
    card = "\n\n".join(parts) + "\n"
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


def shard_adapter_card(metrics: dict, config: dict, repo_id: str | None, shard: int, dataset: str | None = None) -> str:
    """The card pushed with `shard-II/adapter/`: what it is, how it scored, how it was trained, how to load it."""
    base = config.get("model", {}).get("name_or_path")
    metric_rows = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    subfolder = str(ShardPaths.in_repo(shard).adapter)
    load = (
        "```python\n"
        "from peft import PeftModel\n"
        "from transformers import AutoModelForCausalLM\n\n"
        f"base = AutoModelForCausalLM.from_pretrained({base!r})\n"
        f"model = PeftModel.from_pretrained(base, {repo_id or 'REPO'!r}, subfolder={subfolder!r})\n"
        "```"
    )
    return render_model_card(
        {
            "base_model": base,
            "library_name": "peft",
            "tags": ["kit", "lora", "sft", shard_name(shard)],
            "datasets": [dataset] if dataset else None,
        },
        title=f"kit LoRA adapter, shard {shard}",
        sections=[
            (
                "Shard",
                f"Trained by kit on shard {shard} only"
                + (f" of `{dataset}`" if dataset else "")
                + "; merge the shard adapters with `python -m kit merge`.",
            ),
            ("Metrics", markdown_table(metric_rows)),
            *prompt_section(metrics.get("prompt_recipe")),
            ("Training config", f"```json\n{json.dumps(config, indent=2, sort_keys=True)}\n```"),
            ("How to load", load),
        ],
    )
