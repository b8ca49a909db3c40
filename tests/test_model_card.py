"""Model cards that follow the Hub's conventions: shard, merge, and the run repo's root card with the fleet table.

    .venv/bin/python -m pytest -q tests/test_model_card.py    # ~1 min on 2 cores, local test Hub

Cards are read back with huggingface_hub's own ModelCard parser, as the Hub reads them.
"""

from __future__ import annotations

import json
import uuid

from huggingface_hub import ModelCard

from kit.compare import adapter_evaluator, eval_config, merge_and_compare
from kit.config import load_config
from kit.data.shards import push_split
from kit.model_card import hub_base_model, run_card, shard_adapter_card
from kit.train import train_shard

OVERRIDES = ["train.max_steps=2", "train.save_steps=2", "eval.generate_samples=2", "eval.max_new_tokens=8"]


def test_base_model_is_a_hub_id_or_absent_never_a_local_path(tmp_path):
    assert hub_base_model({"model": {"name_or_path": "Qwen/Qwen2.5-1.5B-Instruct"}}) == "Qwen/Qwen2.5-1.5B-Instruct"
    demo = load_config("cpu-demo").to_dict()
    assert hub_base_model(demo) == "HuggingFaceTB/SmolLM2-135M-Instruct"  # model.hub_id of the local copy
    assert hub_base_model(load_config("cpu-tiny").to_dict()) is None  # ${KIT_CACHE}/models/tiny-smollm2
    (tmp_path / "me").mkdir()
    (tmp_path / "me" / "model").mkdir()
    assert hub_base_model({"model": {"name_or_path": str(tmp_path / "me" / "model")}}) is None


def test_a_shard_card_has_the_hubs_metadata_and_its_scores_as_a_model_index():
    config = load_config("cpu-demo").to_dict()
    metrics = {"eval_loss": 0.0609, "json_valid_rate": 1.0, "steps": 40, "prompt_recipe": "prompt as usual"}
    card = ModelCard(shard_adapter_card(metrics, config, "me/run", 3, dataset="me/data"))
    data = card.data
    assert (data.base_model, data.library_name, data.pipeline_tag) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "peft",
        "text-generation",
    )
    assert "shard-03" in data.tags and data.datasets == ["me/data"]
    scores = {r.metric_type: r.metric_value for r in data.eval_results}
    assert scores == {"loss": 0.0609, "json_valid_rate": 1.0}
    assert "subfolder='shard-03/adapter'" in card.text and "## How to prompt" in card.text
    assert "${KIT_CACHE}" not in card.content.split("---")[1]  # not in the metadata


def test_the_run_repo_gets_a_root_card_with_the_fleet_table_after_two_shards_and_a_merge(hub, small_split, tmp_path):
    data, run = f"kit-tester/card-data-{uuid.uuid4().hex[:6]}", f"kit-tester/card-run-{uuid.uuid4().hex[:6]}"
    push_split(small_split, f"hf://datasets/{data}")
    cfg = load_config("cpu-tiny", OVERRIDES)
    first = train_shard(cfg, f"hf://datasets/{data}", 0, f"hf://{run}", work_dir=tmp_path / "w0")
    card = ModelCard(hub.files(run)["README.md"].decode())
    assert "| shard-00 | done | 2/2 |" in card.text and "| shard-01 | not_started |" in card.text
    train_shard(cfg, f"hf://datasets/{data}", 1, f"hf://{run}", work_dir=tmp_path / "w1")
    sources = [f"hf://{run}/shard-00/adapter", f"hf://{run}/shard-01/adapter"]
    evaluator = adapter_evaluator(eval_config(None, OVERRIDES[2:], sources), small_split)
    merge_and_compare(sources, f"hf://{run}/merged", "best", evaluator=evaluator, eval_data=str(small_split))

    files = hub.files(run)
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert card.data.base_model is None  # the tiny test model is a local folder, not a Hub model
    for shard in (0, 1):
        metrics = json.loads(files[f"shard-0{shard}/metrics.json"])
        row = (
            f"| shard-0{shard} | done | 2/2 | {metrics['eval_loss']:.4f} | {metrics['json_valid_rate']:.1%} | "
            f"{json.loads(files[f'shard-0{shard}/status.json'])['platform']} | "
            f"[shard-0{shard}/adapter](/{run}/tree/main/shard-0{shard}/adapter) |"
        )
        assert row in card.text, card.text
    report = json.loads(files["merged/merge_report.json"])
    assert f"| [merged](/{run}/tree/main/merged) | best | exact | {report['chosen']} |" in card.text
    assert card.data.eval_results and card.data.eval_results[0].metric_type == "loss"
    assert "subfolder='merged'" in card.text
    assert first["eval_loss"] is not None
    assert json.loads(files["shard-00/adapter/adapter_config.json"])["revision"] == "main"  # PEFT records it


def test_a_run_card_renders_without_any_shard_done():
    fleet = {
        "shards": [{"shard": 0, "state": "running", "step": 3, "max_steps": 10, "platform": "kaggle"}],
        "totals": {"shards": 1, "by_state": {"running": 1}, "tokens_trained": 100},
    }
    card = ModelCard(run_card(fleet, {}, "me/run", {}))
    assert "| shard-00 | running | 3/10 | — | — | kaggle | — |" in card.text
    assert "REPO" not in card.text and "'me/run'" in card.text
