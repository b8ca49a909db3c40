"""Strategies, scoring and the merge's report and card.

    .venv/bin/python -m pytest tests/test_compare.py -q    # ~20 s, no network

`best` and `greedy` are checked with a fake evaluator that reads scores from a
table (a merge candidate is identified by the sources in its merge_info.json),
so they pick what the scores say, fast and deterministically. One test scores
real adapters on the tiny model with AdapterEvaluator, and one runs the CLI.
"""

import json

import pytest
from conftest import load_script

from kit.cli import main
from kit.compare import AdapterEvaluator, eval_config, format_scores, merge_and_compare, pick_best, plot_comparison
from kit.config import load_config
from kit.errors import ConfigError, MergeError
from kit.evaluate import schema_valid_rate

bench = load_script("bench_merge")
SHAPES = {"model.layers.0.self_attn.q_proj": (24, 16), "model.layers.1.mlp.down_proj": (16, 40)}


class FakeEvaluator:
    """Scores from `table`: sources by label, merge candidates by the frozenset of their sources."""

    def __init__(self, table):
        self.table, self.calls = table, []

    def __call__(self, label, adapter_dir):
        self.calls.append(label)
        if adapter_dir is None:
            return {"eval_loss": 9.0, "json_valid_rate": 0.0}
        info = adapter_dir / "merge_info.json"
        key = frozenset(json.loads(info.read_text())["names"]) if info.is_file() else label
        return dict(self.table[key])


@pytest.fixture
def sources(tmp_path):
    # Laid out as training leaves them (run/shard-0I/adapter): merge outputs go beside the run, never inside it.
    return [
        bench.write_adapter(
            tmp_path / "run" / f"shard-0{i}" / "adapter", SHAPES, r=4, alpha=8, seed=i, train_examples=10 * (i + 1)
        )
        for i in range(4)
    ]


def row(loss, valid=0.5):
    return {"eval_loss": loss, "json_valid_rate": valid}


def test_best_picks_the_lowest_loss_and_copies_it_exactly(sources, tmp_path):
    scores = {"shard-00": row(2.0), "shard-01": row(1.5), "shard-02": row(1.8), "shard-03": row(2.5)}
    report = merge_and_compare(sources, tmp_path / "out", "best", evaluator=FakeEvaluator(scores))
    assert report["chosen"] == "shard-01" and report["merge"]["names"] == ["shard-01"]
    assert report["merge"]["relative_error"] == 0.0 and "lowest eval loss" in report["rule"]
    assert set(report["results"]) == {"base", "shard-00", "shard-01", "shard-02", "shard-03"}


def test_a_near_tie_in_loss_is_broken_by_json_validity(sources, tmp_path):
    scores = {"shard-00": row(1.500, 0.2), "shard-01": row(1.505, 0.9), "shard-02": row(1.6, 1.0), "shard-03": row(3.0)}
    report = merge_and_compare(sources, tmp_path / "out", "best", evaluator=FakeEvaluator(scores), tolerance=0.01)
    assert report["chosen"] == "shard-01"  # shard-02 is valid more often, but 0.1 nats worse is no tie
    assert pick_best({k: v for k, v in scores.items()}, tolerance=0.0) == "shard-00"


def test_greedy_adds_an_adapter_only_when_the_average_improves(sources, tmp_path):
    names = ["shard-00", "shard-01", "shard-02", "shard-03"]
    scores = {
        "shard-00": row(2.0),
        "shard-01": row(1.0),
        "shard-02": row(1.5),
        "shard-03": row(1.2),
        # order tried: 01, then +03 (better), then +02 (worse: rejected), then +00 (better)
        frozenset(["shard-01", "shard-03"]): row(0.9),
        frozenset(["shard-01", "shard-03", "shard-02"]): row(0.95),
        frozenset(["shard-01", "shard-03", "shard-00"]): row(0.8),
    }
    evaluator = FakeEvaluator(scores)
    report = merge_and_compare(sources, tmp_path / "out", "greedy", evaluator=evaluator)
    assert [s["kept"] for s in report["greedy_steps"]] == [True, False, True]
    assert report["merge"]["names"] == ["shard-01", "shard-03", "shard-00"]
    assert report["merge"]["weights"] == pytest.approx([1 / 3] * 3)
    assert report["chosen"] == "soup(shard-01+shard-03+shard-00)"
    assert evaluator.calls[:5] == ["base", *names]


def test_average_scores_base_sources_and_the_merge_and_writes_report_and_card(sources, tmp_path):
    scores = {
        "shard-00": row(2.0),
        "shard-01": row(1.5),
        "shard-02": row(1.8),
        "shard-03": row(2.5),
        frozenset(["shard-00", "shard-01", "shard-02", "shard-03"]): row(1.25, 0.75),
    }
    report = merge_and_compare(
        sources,
        tmp_path / "out",
        "weighted",
        evaluator=FakeEvaluator(scores),
        eval_data="shards/",
        method="svd",
        rank=2,
    )
    saved = json.loads((tmp_path / "out" / "merge_report.json").read_text())
    assert saved["results"]["merged"] == row(1.25, 0.75) and list(saved["results"])[0] == "base"
    # weighted without --weights: the shards' train_examples 10, 20, 30, 40
    assert saved["merge"]["weights"] == pytest.approx([0.1, 0.2, 0.3, 0.4]) and saved["merge"]["rank"] == 2
    card = (tmp_path / "out" / "README.md").read_text()
    for expected in (
        "Strategy **weighted**",
        "Method **svd**",
        "shard-03",
        "0.4000",
        "Retained energy",
        f"{report['merge']['relative_error']:.3g}",
        "| merged | 1.2500 | 0.7500 |",
        "library_name: peft",
    ):
        assert expected in card, expected


def test_best_without_eval_data_and_weights_without_weighted_are_refused(sources, tmp_path):
    with pytest.raises(MergeError, match="strategy='best' picks by eval scores: give eval_data"):
        merge_and_compare(sources, tmp_path / "out", "best")
    with pytest.raises(MergeError, match="weights apply to strategy='weighted'"):
        merge_and_compare(sources, tmp_path / "out", "average", weights=[1, 2, 3, 4])
    assert not (tmp_path / "out").exists()


def test_schema_validity_counts_answers_that_parse_and_validate():
    schema = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
    answers = ['{"name": "x"}', '```json\n{"name": 3}\n```', "not json", '{"name": "y", "age": 2}']
    assert schema_valid_rate(answers, schema) == 0.5


def test_the_table_shows_a_schema_column_only_when_scored():
    plain = format_scores({"base": row(2.0), "merged": row(1.0, 1.0)})
    assert "schema_valid_rate" not in plain and "1.0000" in plain
    scored = format_scores({"base": {**row(2.0), "schema_valid_rate": 0.25}})
    assert "schema_valid_rate" in scored and "0.2500" in scored


def test_the_plot_is_a_png_or_none_without_matplotlib(tmp_path):
    result = plot_comparison({"base": row(2.0), "merged": row(1.0)}, tmp_path / "scores.png")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert result is None
    else:
        assert result.read_bytes()[:4] == b"\x89PNG"


def test_the_real_evaluator_scores_base_and_adapters_on_the_same_split(tiny_model_dir, small_split, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = load_config("cpu-tiny", ["eval.generate_samples=2", "eval.max_new_tokens=4"])
    adapter = tmp_path / "a"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(
        model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).save_pretrained(adapter)
    schema = {"type": "object"}
    evaluator = AdapterEvaluator(cfg, small_split, schema)
    before = evaluator("base", None)
    with_adapter = evaluator("a", adapter)
    after = evaluator("base", None)
    assert before["eval_loss"] == pytest.approx(after["eval_loss"], rel=1e-6)  # the adapter is off for the base row
    assert abs(with_adapter["eval_loss"] - before["eval_loss"]) > 1e-3
    assert {"json_valid_rate", "schema_valid_rate"} <= set(with_adapter) and with_adapter["generated"] == 2


def test_the_merge_command_merges_scores_nothing_without_eval_data_and_refuses_bad_input(sources, tmp_path, capsys):
    out = tmp_path / "m"
    assert (
        main(
            [
                "merge",
                *map(str, sources[:2]),
                "--strategy",
                "weighted",
                "--weights=3,-1",
                "--method",
                "svd",
                "--rank",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "weighted (svd): chose merged" in printed and "(nothing evaluated" in printed
    assert json.loads((out / "merge_report.json").read_text())["merge"]["weights"] == [1.5, -0.5]
    config = json.loads((sources[1] / "adapter_config.json").read_text())
    (sources[1] / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    assert main(["merge", *map(str, sources[:2]), "--out", str(tmp_path / "n")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: adapters are not compatible") and "shard-01: DoRA" in err and "Traceback" not in err
    assert (
        main(["merge", str(sources[0]), "--weights", "1,x", "--strategy", "weighted", "--out", str(tmp_path / "n")])
        == 2
    )
    assert "give numbers separated by commas" in capsys.readouterr().err


def test_without_a_preset_scoring_uses_the_adapters_base_and_still_checks_overrides(sources):
    cfg = eval_config(None, ["eval.generate_samples=3"], sources)
    assert cfg.model.name_or_path == "bench/base" and cfg.eval.generate_samples == 3
    with pytest.raises(ConfigError, match="unknown key 'eval.bogus'"):
        eval_config(None, ["eval.bogus=1"], sources)


def test_the_merge_card_repeats_the_shards_inference_recipe(sources, tmp_path):
    recipe = "this template's generation prompt ends with '<think>\\n'; drop it."
    for source in sources:
        info = json.loads((source / "kit_adapter.json").read_text())
        (source / "kit_adapter.json").write_text(json.dumps({**info, "prompt_recipe": recipe}))
    scores = {name: row(1.0 + i / 10) for i, name in enumerate(["shard-00", "shard-01", "shard-02", "shard-03"])}
    report = merge_and_compare(sources, tmp_path / "out", "best", evaluator=FakeEvaluator(scores))
    assert report["prompt_recipe"] == recipe
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## How to prompt\n\nThis template's generation prompt ends with '<think>\\n'; drop it." in card


class RecordingBar:
    """Stands in for the tqdm bar: keeps every position and postfix it was given."""

    def __init__(self, total, unit):
        self.total, self.unit, self.n, self.positions, self.postfixes = total, unit, 0, [], []

    def update(self, k=1):
        self.n += k
        self.positions.append(self.n)

    def set_postfix_str(self, text, refresh=True):
        self.postfixes.append(text)

    def close(self):
        pass


def test_the_merge_progress_bar_advances_per_eval_batch_and_names_each_candidate(
    tiny_model_dir, small_split, tmp_path, monkeypatch
):
    from test_merge import make_adapter

    import kit.compare
    from kit.evaluate import eval_batches
    from kit.model import load_tokenizer

    bars = []
    monkeypatch.setattr(
        kit.compare, "_progress", lambda total, unit="model": bars.append(RecordingBar(total, unit)) or bars[-1]
    )
    adapters = [
        make_adapter(tiny_model_dir, tmp_path / f"run/shard-0{i}/adapter", r=4, alpha=8, seed=i) for i in (0, 1)
    ]
    cfg = load_config("cpu-tiny", ["eval.generate_samples=4", "eval.max_new_tokens=4", "eval.batch_size=2"])
    merge_and_compare(adapters, tmp_path / "out", "average", evaluator=AdapterEvaluator(cfg, small_split))
    bar = bars[0]
    per_model = eval_batches(load_tokenizer(cfg), AdapterEvaluator(cfg, small_split).records, cfg.eval, 1024)
    assert per_model == 2 + 3  # 4 prompts generated in batches of 2; 6 eval examples scored in batches of 2
    assert (bar.unit, bar.total) == ("batch", 4 * per_model)  # base, two shards, the merge
    assert bar.positions == list(range(1, 4 * per_model + 1))  # one step per batch, none skipped or doubled
    assert bar.postfixes == ["base (model 1/4)", "shard-00 (model 2/4)", "shard-01 (model 3/4)", "merged (model 4/4)"]
