"""The merge's compressed and baseline methods against dense checks, on adapters written from shapes.

    .venv/bin/python -m pytest tests/test_merge_math.py -q    # seconds, no model, no network

The adapters come from scripts/bench_merge.py's `write_adapter` (random non-zero
factors, PEFT's file layout), so every expected value here is computed densely,
dW = s * B @ A, independently of the QR/Gram shortcuts kit/merge.py takes.
"""

import json
import math

import pytest
import torch
from conftest import load_script
from safetensors.torch import load_file, save_file

from kit.errors import MergeError
from kit.merge import load_adapters, merge_adapters, sample_count_weights

bench = load_script("bench_merge")
SHAPES = {
    "model.layers.0.self_attn.q_proj": (24, 16),
    "model.layers.0.mlp.down_proj": (16, 40),
    "model.layers.1.mlp.up_proj": (40, 16),
}


def dense(adapter_dir) -> dict[str, torch.Tensor]:
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    s = config["lora_alpha"] / (math.sqrt(config["r"]) if config["use_rslora"] else config["r"])
    w = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return {
        k[: -len(".lora_A.weight")].removeprefix("base_model.model."): s
        * w[k.replace("lora_A", "lora_B")].double()
        @ w[k].double()
        for k in w
        if "lora_A" in k
    }


@pytest.fixture
def sources(tmp_path):
    return [
        bench.write_adapter(tmp_path / f"s{i}", SHAPES, r=r, alpha=a, seed=i, use_rslora=rs, train_examples=n)
        for i, (r, a, rs, n) in enumerate([(4, 8, False, 30), (3, 16, True, 10), (5, 5, False, 60)])
    ]


def target(sources, weights):
    total = sum(weights)
    parts = [dense(s) for s in sources]
    return {m: sum(w / total * p[m] for w, p in zip(weights, parts)) for m in parts[0]}


def test_exact_merge_of_mixed_rank_alpha_and_rslora_matches_the_dense_weighted_sum(sources, tmp_path):
    report = merge_adapters(sources, tmp_path / "m", weights=[1, 2, 3])
    got, want = dense(tmp_path / "m"), target(sources, [1, 2, 3])
    assert report["rank"] == 12 and report["relative_error"] == 0.0
    assert max((got[m] - want[m]).abs().max().item() for m in want) < 1e-6


def test_svd_at_full_rank_has_no_error(sources, tmp_path):
    report = merge_adapters(sources, tmp_path / "m", method="svd", rank=12)
    got, want = dense(tmp_path / "m"), target(sources, [1, 1, 1])
    assert report["relative_error"] < 1e-6 and report["retained_energy"]["min"] == pytest.approx(1.0)
    assert max((got[m] - want[m]).abs().max().item() for m in want) < 1e-6


def test_svd_at_low_rank_reports_the_error_a_dense_check_measures(sources, tmp_path):
    report = merge_adapters(sources, tmp_path / "m", weights=[3, 1, 1], method="svd", rank=3)
    got, want = dense(tmp_path / "m"), target(sources, [3, 1, 1])
    assert report["rank"] == 3 and json.loads((tmp_path / "m" / "adapter_config.json").read_text())["r"] == 3
    err2 = norm2 = 0.0
    for module, w in want.items():
        measured = ((got[module] - w).norm() / w.norm()).item()
        # Eckart-Young: the best rank-3 error is the energy of the dropped singular values.
        s = torch.linalg.svdvals(w)
        best = math.sqrt((s[3:] ** 2).sum() / (s**2).sum())
        assert measured == pytest.approx(best, rel=1e-4)
        assert report["module_errors"][module] == pytest.approx(measured, rel=1e-4)
        assert report["retained_energy"]["per_module"][module] == pytest.approx(1 - best**2, rel=1e-4)
        err2, norm2 = err2 + ((got[module] - w) ** 2).sum().item(), norm2 + (w**2).sum().item()
    assert 0.05 < report["relative_error"] == pytest.approx(math.sqrt(err2 / norm2), rel=1e-4)


def test_linear_error_is_computed_from_factors_as_a_dense_check_would(tmp_path):
    same_rank = [bench.write_adapter(tmp_path / f"s{i}", SHAPES, r=4, alpha=8, seed=i) for i in range(3)]
    report = merge_adapters(same_rank, tmp_path / "m", method="linear")
    got, want = dense(tmp_path / "m"), target(same_rank, [1, 1, 1])
    err = math.sqrt(sum(((got[m] - want[m]) ** 2).sum() for m in want) / sum((w**2).sum() for w in want.values()))
    assert err > 0.5 and report["relative_error"] == pytest.approx(err, rel=1e-4)


def test_linear_on_identical_adapters_gives_n_times_the_update(tmp_path):
    """The invariant's warning, measured: with shared factors PEFT's `linear` triples a 3-way average."""
    one = bench.write_adapter(tmp_path / "s", SHAPES, r=4, alpha=8, seed=0)
    copies = [bench.write_adapter(tmp_path / f"s{i}", SHAPES, r=4, alpha=8, seed=0) for i in (1, 2)]  # same factors
    report = merge_adapters([one, *copies], tmp_path / "m", method="linear")
    got, want = dense(tmp_path / "m"), dense(one)
    assert all(torch.allclose(got[m], 3 * want[m], atol=1e-6) for m in want)
    assert report["relative_error"] == pytest.approx(2.0, rel=1e-5)


def test_weighted_defaults_to_the_shards_sample_counts(sources, tmp_path):
    (sources[2] / "kit_adapter.json").unlink()  # this one's count comes from the shard's metrics.json instead
    (sources[2].parent / "metrics.json").write_text(json.dumps({"train_examples": 60}))
    assert sample_count_weights(load_adapters(sources)) == [30.0, 10.0, 60.0]
    (sources[2].parent / "metrics.json").unlink()
    with pytest.raises(MergeError, match=r"no sample count for \['s2'\].*give weights"):
        sample_count_weights(load_adapters(sources))


def test_an_adapter_holding_nans_is_named_and_nothing_is_written(sources, tmp_path):
    path = sources[1] / "adapter_model.safetensors"
    weights = load_file(str(path))
    key = next(iter(weights))
    weights[key][0, 0] = float("nan")
    save_file(weights, str(path))
    with pytest.raises(MergeError, match="s1: NaN/inf in the factors"):
        merge_adapters(sources, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_the_benchmark_shapes_are_the_models_linear_layers():
    small = bench.linear_shapes(**bench.SHAPES["smollm2-135m"])
    big = bench.linear_shapes(**bench.SHAPES["qwen2.5-1.5b"])
    assert len(small) == 30 * 7 and small["model.layers.0.self_attn.k_proj"] == (192, 576)
    assert len(big) == 28 * 7 and big["model.layers.27.mlp.down_proj"] == (1536, 8960)
    assert big["model.layers.0.self_attn.v_proj"] == (256, 1536)
