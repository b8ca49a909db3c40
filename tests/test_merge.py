"""The merge on real PEFT adapters of a tiny model: exact average, weights, full model, baselines, refusals.

    .venv/bin/python -m pytest tests/test_merge.py -q    # ~20 s, no network

LoRA starts with B = 0, so an adapter fresh from init has no update and any
merge would "pass"; these adapters start away from zero (init_lora_weights=False).
"""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from kit.errors import MergeError
from kit.merge import merge_adapters

IDS = torch.tensor([[1, 50, 300, 4000, 20, 7]])


def make_adapter(base_dir, out, r, alpha, seed, use_rslora=False, targets=("q_proj", "v_proj", "down_proj")):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, use_rslora=use_rslora
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out)
    return out


def deltas(base_dir, adapter_dir) -> dict[str, torch.Tensor]:
    """module name -> dW as PEFT itself computes it (scaling included)."""
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    out = {}
    for name, module in model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            out[name] = module.get_delta_weight("default").detach().float()
    return out


@pytest.fixture
def two_adapters(tiny_model_dir, tmp_path):
    a = make_adapter(tiny_model_dir, tmp_path / "a", r=4, alpha=8, seed=1)
    b = make_adapter(tiny_model_dir, tmp_path / "b", r=8, alpha=4, seed=2)
    return a, b


def test_the_average_update_is_the_mean_of_the_updates(tiny_model_dir, two_adapters, tmp_path):
    a, b = two_adapters
    report = merge_adapters([a, b], tmp_path / "merged")
    da, db, dm = (deltas(tiny_model_dir, p) for p in (a, b, tmp_path / "merged"))
    assert dm.keys() == da.keys() and len(dm) == 6
    for name in dm:
        expected = (da[name] + db[name]) / 2
        assert expected.abs().max() > 1e-3  # a real update, not zeros
        assert (dm[name] - expected).abs().max() <= 1e-6, name
    assert report["rank"] == 12 and report["weights"] == [0.5, 0.5]
    # Mixed rank and alpha merge exactly; they are reported as information, not refused.
    assert report["relative_error"] == 0.0
    assert any("mixed rank" in n for n in report["notes"]) and any("mixed lora_alpha" in n for n in report["notes"])


def test_averaging_the_factors_separately_would_fail_this_check(tiny_model_dir, tmp_path):
    """The exactness check can fail: PEFT-style `linear` factor averaging is measurably off."""
    from safetensors.torch import load_file

    a = make_adapter(tiny_model_dir, tmp_path / "a", r=4, alpha=8, seed=1)
    c = make_adapter(tiny_model_dir, tmp_path / "c", r=4, alpha=8, seed=3)
    wa, wc = (load_file(str(p / "adapter_model.safetensors")) for p in (a, c))
    key_a = next(k for k in wa if "lora_A" in k)
    key_b = key_a.replace("lora_A", "lora_B")
    exact = (wa[key_b] @ wa[key_a] + wc[key_b] @ wc[key_a]) / 2
    factor_average = ((wa[key_b] + wc[key_b]) / 2) @ ((wa[key_a] + wc[key_a]) / 2)
    assert (factor_average - exact).abs().max() > 1e-3


def test_the_merged_model_equals_the_base_plus_the_mean_update_applied_by_hand(tiny_model_dir, two_adapters, tmp_path):
    a, b = two_adapters
    merge_adapters([a, b], tmp_path / "merged")
    da, db = deltas(tiny_model_dir, a), deltas(tiny_model_dir, b)
    ids = torch.tensor([[1, 50, 300, 4000, 20, 7]])
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "merged").eval()
    by_hand = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        for name, module in by_hand.named_modules():
            key = f"base_model.model.{name}"
            if key in da:
                module.weight += (da[key] + db[key]) / 2
        assert torch.allclose(merged(ids).logits, by_hand(ids).logits, atol=1e-5)


def logits(base_dir, adapter_dir=None):
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    with torch.no_grad():
        return model.eval()(IDS).logits


def test_one_adapter_with_weight_one_is_unchanged(tiny_model_dir, two_adapters, tmp_path):
    a, _ = two_adapters
    report = merge_adapters([a], tmp_path / "merged", weights=[1.0])
    da, dm = deltas(tiny_model_dir, a), deltas(tiny_model_dir, tmp_path / "merged")
    assert max((da[k] - dm[k]).abs().max().item() for k in da) <= 1e-6
    assert report["relative_error"] == 0.0 and report["weights"] == [1.0]
    assert torch.equal(logits(tiny_model_dir, a), logits(tiny_model_dir, tmp_path / "merged"))


def test_n_identical_adapters_average_to_the_same_adapter(tiny_model_dir, two_adapters, tmp_path):
    import shutil

    a, _ = two_adapters
    copies = [a] + [shutil.copytree(a, tmp_path / f"copy{i}" / "a") for i in (1, 2)]  # same content, three sources
    report = merge_adapters(copies, tmp_path / "merged")
    da, dm = deltas(tiny_model_dir, a), deltas(tiny_model_dir, tmp_path / "merged")
    assert report["rank"] == 12 and report["names"] == ["a", "a-2", "a-3"]
    assert max((da[k] - dm[k]).abs().max().item() for k in da) <= 1e-6


def test_negative_weights_subtract_an_update(tiny_model_dir, two_adapters, tmp_path):
    a, b = two_adapters
    report = merge_adapters([a, b], tmp_path / "merged", weights=[2, -1])
    da, db, dm = (deltas(tiny_model_dir, p) for p in (a, b, tmp_path / "merged"))
    assert report["weights"] == [2.0, -1.0]  # already summing to 1
    for name in dm:
        assert (dm[name] - (2 * da[name] - db[name])).abs().max() <= 1e-5


def test_weights_that_sum_to_zero_are_refused_before_anything_is_written(two_adapters, tmp_path):
    a, b = two_adapters
    with pytest.raises(MergeError, match="sum to 0"):
        merge_adapters([a, b], tmp_path / "merged", weights=[1, -1])
    assert not (tmp_path / "merged").exists()


def test_the_linear_baseline_is_labelled_and_reports_its_error(tiny_model_dir, tmp_path):
    a = make_adapter(tiny_model_dir, tmp_path / "a", r=4, alpha=8, seed=1)
    c = make_adapter(tiny_model_dir, tmp_path / "c", r=4, alpha=8, seed=3)
    report = merge_adapters([a, c], tmp_path / "linear", method="linear")
    da, dc, dl = (deltas(tiny_model_dir, p) for p in (a, c, tmp_path / "linear"))
    assert report["method"] == "linear" and report["rank"] == 4
    err2 = sum(((dl[k] - (da[k] + dc[k]) / 2) ** 2).sum() for k in dl)
    norm2 = sum((((da[k] + dc[k]) / 2) ** 2).sum() for k in dl)
    dense = (err2 / norm2).sqrt().item()
    assert dense > 0.1  # far from the average of the updates
    assert report["relative_error"] == pytest.approx(dense, rel=1e-4)


def test_linear_needs_equal_ranks_and_says_which_method_to_use(two_adapters, tmp_path):
    with pytest.raises(MergeError, match="method='linear' averages factors, so it needs equal ranks"):
        merge_adapters(list(two_adapters), tmp_path / "merged", method="linear")


def test_the_full_model_has_the_exact_adapters_logits(tiny_model_dir, two_adapters, tmp_path):
    a, b = two_adapters
    merge_adapters([a, b], tmp_path / "exact", weights=[3, 1])
    report = merge_adapters([a, b], tmp_path / "full", weights=[3, 1], method="full")
    assert report["rank"] is None and (tmp_path / "full" / "tokenizer.json").is_file()
    assert not (tmp_path / "full" / "adapter_config.json").exists()
    full = logits(tmp_path / "full")
    assert torch.allclose(full, logits(tiny_model_dir, tmp_path / "exact"), atol=1e-5)
    assert (full - logits(tiny_model_dir)).abs().max() > 1e-3  # the merge changed the model


def test_the_full_model_is_saved_in_the_base_models_own_dtype(tiny_model_dir, tmp_path):
    base = tmp_path / "base-bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base)
    a = make_adapter(base, tmp_path / "a", r=4, alpha=8, seed=1)
    merge_adapters([a], tmp_path / "full", method="full")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "full").model.embed_tokens.weight.dtype == torch.bfloat16


def test_weights_are_normalised_and_rslora_scaling_is_respected(tiny_model_dir, tmp_path):
    a = make_adapter(tiny_model_dir, tmp_path / "a", r=4, alpha=8, seed=1, use_rslora=True)
    b = make_adapter(tiny_model_dir, tmp_path / "b", r=4, alpha=8, seed=2)
    merge_adapters([a, b], tmp_path / "merged", weights=[3, 1])
    da, db, dm = (deltas(tiny_model_dir, p) for p in (a, b, tmp_path / "merged"))
    for name in dm:
        assert (dm[name] - (0.75 * da[name] + 0.25 * db[name])).abs().max() <= 1e-6


def test_incompatible_adapters_are_refused_with_every_reason(tiny_model_dir, tmp_path):
    a = make_adapter(tiny_model_dir, tmp_path / "a", r=4, alpha=8, seed=1)
    b = make_adapter(tiny_model_dir, tmp_path / "b", r=4, alpha=8, seed=2, targets=("q_proj",))
    config = json.loads((b / "adapter_config.json").read_text())
    config.update(use_dora=True, base_model_name_or_path="some/other-model")
    (b / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError) as err:
        merge_adapters([a, b], tmp_path / "merged")
    message = str(err.value)
    assert "DoRA" in message and "base_model_name_or_path" in message and "target_modules" in message
    assert not (tmp_path / "merged").exists()


def test_an_adapter_that_trains_biases_is_refused_with_the_reason(tiny_model_dir, tmp_path):
    a = make_adapter(tiny_model_dir, tmp_path / "a", r=4, alpha=8, seed=1)
    config = json.loads((a / "adapter_config.json").read_text())
    (a / "adapter_config.json").write_text(json.dumps({**config, "bias": "lora_only"}))
    with pytest.raises(MergeError, match="bias='lora_only' trains base biases"):
        merge_adapters([a], tmp_path / "merged")


def test_a_source_without_an_adapter_says_what_to_pass(tmp_path):
    with pytest.raises(MergeError, match="no adapter_config.json"):
        merge_adapters([tmp_path], tmp_path / "merged")


@pytest.fixture
def trained_run(tiny_model_dir, tmp_path):
    """A run folder as training leaves it: run/shard-0I/adapter/ for two shards."""
    run = tmp_path / "run"
    for i, seed in enumerate((1, 2)):
        make_adapter(tiny_model_dir, run / f"shard-0{i}" / "adapter", r=4, alpha=8, seed=seed)
    return run


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    "out",
    ["run/shard-00/adapter", "run/shard-01", "run", "run/merged"],
    ids=["a-shards-adapter", "a-shard-folder", "the-run-folder", "inside-the-run-folder"],
)
def test_merging_into_a_sources_adapter_shard_or_run_folder_is_refused_and_leaves_it_intact(
    trained_run, tmp_path, out, monkeypatch
):
    from kit.cli import main

    monkeypatch.chdir(tmp_path)
    before = snapshot(trained_run)
    assert main(["merge", "run/shard-00", "run/shard-01", "--out", out]) == 2
    assert snapshot(trained_run) == before, "every file training saved is byte-identical"


def test_a_non_empty_folder_that_is_no_earlier_merge_needs_overwrite(trained_run, tmp_path, capsys):
    from kit.cli import main
    from kit.compare import merge_and_compare

    sources = [trained_run / "shard-00", trained_run / "shard-01"]
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    assert main(["merge", *map(str, sources), "--out", str(notes)]) == 2
    assert "--overwrite" in capsys.readouterr().err and not (notes / "adapter_config.json").exists()
    assert main(["merge", *map(str, sources), "--out", str(notes), "--overwrite"]) == 0
    assert (notes / "todo.txt").read_text() == "mine" and (notes / "adapter_config.json").is_file()
    merged = tmp_path / "merged"
    merge_and_compare(sources, merged)
    merge_and_compare(sources, merged, strategy="weighted", weights=[3, 1])  # an earlier merge output is replaced
    assert json.loads((merged / "merge_report.json").read_text())["strategy"] == "weighted"


def test_the_same_source_given_twice_is_refused_before_anything_is_written(two_adapters, tmp_path):
    a, b = two_adapters
    with pytest.raises(MergeError, match=r"are the same adapter .* given twice it would count twice") as err:
        merge_adapters([a, b, tmp_path / "a" / "."], tmp_path / "merged")
    assert err.value.params == ("sources", "weights") and not (tmp_path / "merged").exists()


def test_a_rank_that_is_clamped_or_ignored_says_so_and_rank_zero_is_refused(two_adapters, tmp_path):
    a, b = two_adapters  # ranks 4 and 8
    clamped = merge_adapters([a, b], tmp_path / "svd", method="svd", rank=100)
    assert clamped["rank"] == 12 and "rank=100 is clamped to 12" in clamped["notes"][-1]
    assert clamped["relative_error"] < 1e-6, "all of the exact average's rank is kept"
    ignored = merge_adapters([a, b], tmp_path / "exact", rank=3)
    assert ignored["rank"] == 12 and "rank=3 is ignored" in ignored["notes"][-1]
    with pytest.raises(MergeError, match=r"rank=0: the svd rank must be at least 1"):
        merge_adapters([a, b], tmp_path / "zero", method="svd", rank=0)
