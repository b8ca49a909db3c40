"""Score the base model and several adapters side by side on the shared eval split.

    table = compare_adapters(cfg, "shards/", {"shard-00": "runs/x/shard-00/adapter", "merged": "merged/"})
    print(format_table(table))

The base model is loaded once; each adapter is attached with PEFT's adapter API
(`load_adapter` / `set_adapter`) and the base row is scored with the adapters
disabled, so every row sees the same weights, prompts and decoding.
"""

from __future__ import annotations

from pathlib import Path

from kit.config import RunConfig
from kit.data.shards import load_eval
from kit.evaluate import evaluate_model
from kit.files import write_json_atomic
from kit.model import load_base_model, load_tokenizer

METRICS = ("eval_loss", "json_valid_rate")


def compare_adapters(
    cfg: RunConfig, eval_data: str | Path, adapters: dict[str, str | Path], report_dir: str | Path | None = None
) -> dict[str, dict]:
    """{"base": {...}, name: {...}, ...}: eval_loss, json_valid_rate, generations for each."""
    from peft import PeftModel

    eval_records = load_eval(eval_data)
    tokenizer = load_tokenizer(cfg)
    base = load_base_model(cfg)
    names = list(adapters)
    model = PeftModel.from_pretrained(base, str(adapters[names[0]]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(adapters[name]), adapter_name=name)

    def score(label: str) -> dict:
        print(f"evaluating {label} on {len(eval_records)} eval examples", flush=True)
        return evaluate_model(model, tokenizer, eval_records, cfg.eval, cfg.data.max_length)

    table = {}
    with model.disable_adapter():
        table["base"] = score("base")
    for name in names:
        model.set_adapter(name)
        table[name] = score(name)
    if report_dir is not None:
        write_json_atomic(Path(report_dir) / "merge_report.json", {"eval_data": str(eval_data), "results": table})
    return table


def format_table(table: dict[str, dict], extra: tuple[str, ...] = ()) -> str:
    columns = METRICS + tuple(extra)
    width = max(len(n) for n in table) + 2
    lines = ["model".ljust(width) + "".join(c.rjust(18) for c in columns)]
    for name, row in table.items():
        cells = []
        for c in columns:
            value = row.get(c)
            cells.append(("—" if value is None else f"{value:.4f}").rjust(18))
        lines.append(name.ljust(width) + "".join(cells))
    return "\n".join(lines)
