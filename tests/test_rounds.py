"""The outer step of fleet rounds (kit/rounds.py): exact round changes, DiLoCo's Nesterov step, rank r again.

    .venv/bin/python -m pytest -q tests/test_rounds.py    # seconds, no model, no network

Adapters are random LoRA factors on two modules. Where the shards share their A
factors (a common row space), every update has rank <= r and the outer step must be
exact: it is then checked against torch.optim.SGD(nesterov=True) on dense dW.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from kit.merge import Adapter, load_adapters
from kit.rounds import load_outer_state, outer_step, save_global, save_outer_state

SHAPES = {"layers.0.q_proj": (12, 10), "layers.1.down_proj": (10, 16)}
R, ALPHA = 4, 8  # scaling s = 2


def adapter(name: str, seed: int, shared_a: dict | None = None) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for module, (out, inp) in SHAPES.items():
        a = shared_a[module] if shared_a else torch.randn(R, inp, generator=g)
        factors[module] = (a, torch.randn(out, R, generator=g))
    return Adapter(name, None, {"r": R, "lora_alpha": ALPHA, "use_rslora": False}, factors)


def dense(factors, scale: float = 1.0) -> dict:
    return {m: scale * b.double() @ a.double() for m, (a, b) in factors.items()}


def shared_rows(seed: int = 100) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(R, inp, generator=g) for m, (_, inp) in SHAPES.items()}


def test_plain_averaging_gives_the_rank_r_svd_of_the_exact_weighted_mean_of_the_shards():
    start, shards = adapter("global", 0), [adapter(f"shard-0{i}", i + 1) for i in range(3)]
    new, state, record = outer_step(start, shards, weights=[1, 2, 1], space="svd")
    mean = {
        m: sum(w * d[m] for w, d in zip([0.25, 0.5, 0.25], (dense(s.factors, 2.0) for s in shards))) for m in SHAPES
    }
    for m in SHAPES:
        u, s, vh = torch.linalg.svd(mean[m])
        best = (u[:, :R] * s[:R]) @ vh[:R]  # Eckart-Young: the best rank-R matrix
        got = 2.0 * new[m][1].double() @ new[m][0].double()  # stored B / s: the shards' scaling brings it back
        assert torch.allclose(got, best, atol=1e-5)
    assert state is None and 0 < record["svd_error"] < record["factor_average_error"]


def test_shards_in_one_row_space_make_the_step_exact_and_equal_to_dilocos_nesterov_sgd():
    rows = shared_rows()
    start = adapter("global", 0, rows)
    params = {m: torch.nn.Parameter(d.clone()) for m, d in dense(start.factors, 2.0).items()}
    sgd = torch.optim.SGD(params.values(), lr=0.7, momentum=0.9, nesterov=True)
    state, current = None, start
    for round_ in range(3):
        shards = [adapter(f"shard-0{i}", 10 * round_ + i, rows) for i in range(2)]
        new, state, record = outer_step(current, shards, lr=0.7, momentum=0.9, state=state, space="svd")
        mean = {m: sum(dense(s.factors, 2.0)[m] for s in shards) / 2 for m in SHAPES}
        sgd.zero_grad()
        for m, p in params.items():
            p.grad = -(mean[m] - p.detach())  # the outer gradient: minus the round's change
        sgd.step()
        for m, p in params.items():
            got = 2.0 * new[m][1].double() @ new[m][0].double()
            assert torch.allclose(got, p.detach(), atol=1e-4), (round_, m)
        assert record["svd_error"] < 1e-6
        current = Adapter("global", None, start.config, new)


def test_the_velocity_is_kept_low_rank_with_its_truncation_error_recorded_and_round_trips(tmp_path):
    start, state = adapter("global", 0), None
    for round_ in range(3):
        shards = [adapter(f"s{i}", 50 + 10 * round_ + i) for i in range(2)]
        _, state, record = outer_step(start, shards, lr=0.5, momentum=0.9, state=state, state_rank=6, space="svd")
    assert all(a.shape[0] == 6 for a, _ in state.values())
    assert 0 < record["state_error"] < 1
    save_outer_state(state, tmp_path / "outer_state.safetensors")
    again = load_outer_state(tmp_path / "outer_state.safetensors")
    assert all(torch.equal(again[m][0], state[m][0]) and torch.equal(again[m][1], state[m][1]) for m in state)
    assert load_outer_state(tmp_path / "none.safetensors") is None


def test_the_next_global_is_a_peft_adapter_with_the_shards_rank_and_scaling(tmp_path):
    from conftest import _require_model
    from test_merge import make_adapter

    base = _require_model("tiny-smollm2")
    sources = [make_adapter(base, tmp_path / f"a{i}", r=4, alpha=8, seed=i) for i in range(3)]
    start, *shards = load_adapters(sources)
    new, _, _ = outer_step(start, shards)
    save_global(new, start, tmp_path / "global")
    (loaded,) = load_adapters([tmp_path / "global"])
    assert (loaded.rank, loaded.config["lora_alpha"]) == (4, 8)
    for m in new:
        assert torch.allclose(loaded.factors[m][1] @ loaded.factors[m][0], new[m][1] @ new[m][0], atol=1e-6)


def test_a_round_without_shards_is_refused():
    with pytest.raises(ValueError, match="at least one shard"):
        outer_step(adapter("global", 0), [])


class Probe(TrainerCallback):
    """Runs after RoundStart at train begin: what the round starts from."""

    def __init__(self):
        self.weights, self.optimizer_state = None, None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.weights = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}
        self.optimizer_state = len(optimizer.state)


@pytest.mark.parametrize("reset", [False, True], ids=["kept", "reset"])
def test_a_round_resumes_the_shards_checkpoint_and_starts_from_the_global_adapter(small_split, tmp_path, reset):
    from kit.config import load_config
    from kit.data.records import to_messages
    from kit.data.shards import load_shard
    from kit.data.tokenize import encode_records
    from kit.model import add_lora, load_base_model, load_tokenizer
    from kit.rounds import RoundBoundary, RoundStart
    from kit.train import build_trainer

    cfg = load_config("cpu-tiny", ["train.max_steps=4", "train.save_steps=4"])
    tokenizer = load_tokenizer(cfg)
    convs = [to_messages(r) for r in load_shard(small_split, 0)]
    dataset, _ = encode_records(tokenizer, convs, max_length=cfg.data.max_length)
    shard_dir = tmp_path / "shard-00"
    first = build_trainer(cfg, dataset, tokenizer, shard_dir, callbacks=[RoundBoundary(2)])
    first.train()
    assert first.state.global_step == 2 and (shard_dir / "checkpoint-2").is_dir()  # the round's end, saved

    model = add_lora(load_base_model(cfg), cfg)  # another global: the init with every B made non-zero
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    model.save_pretrained(tmp_path / "global")
    expected = {k: v.detach().clone() for k, v in model.named_parameters() if "lora_" in k}

    probe = Probe()
    second = build_trainer(
        cfg, dataset, tokenizer, shard_dir, callbacks=[RoundStart(tmp_path / "global", reset), probe, RoundBoundary(2)]
    )
    second.train(resume_from_checkpoint=str(shard_dir / "checkpoint-2"))
    assert second.state.global_step == 4  # the shard's own step count and schedule go on
    assert probe.weights.keys() == expected.keys()
    assert all(torch.equal(probe.weights[k], expected[k]) for k in expected), "round 2 starts from the global"
    assert probe.optimizer_state == (0 if reset else len(expected))  # AdamW's moments, kept or dropped


def test_the_next_globals_a_keeps_the_start_scale_so_the_next_round_trains_like_the_first():
    start, shards = adapter("global", 0), [adapter(f"shard-0{i}", i + 1) for i in range(2)]
    shards = [Adapter(s.name, None, s.config, {m: (a, 1e-3 * b) for m, (a, b) in s.factors.items()}) for s in shards]
    new, _, _ = outer_step(start, shards, space="svd")  # a small round: dW ~ 1e-3, as after a few steps from B = 0
    for m, (a, _) in new.items():
        start_rms = start.factors[m][0].norm() / R**0.5
        assert torch.allclose(a.norm(dim=1), torch.full((R,), float(start_rms)), rtol=1e-4)  # not sqrt(sigma)
    mean = {m: sum(dense(s.factors, 2.0)[m] for s in shards) / 2 for m in SHAPES}
    for m in SHAPES:
        u, s, vh = torch.linalg.svd(mean[m])
        assert torch.allclose(2.0 * new[m][1].double() @ new[m][0].double(), (u[:, :R] * s[:R]) @ vh[:R], atol=1e-8)


def test_the_factor_space_step_is_dilocos_nesterov_on_a_and_b_with_its_error_against_the_exact_mean():
    start = adapter("global", 0)
    params = [torch.nn.Parameter(t.clone()) for m in SHAPES for t in start.factors[m]]
    sgd = torch.optim.SGD(params, lr=0.7, momentum=0.9, nesterov=True)
    state, current = None, start
    for round_ in range(2):
        shards = [adapter(f"s{i}", 30 + 10 * round_ + i) for i in range(2)]
        new, state, record = outer_step(current, shards, lr=0.7, momentum=0.9, state=state, space="factors")
        sgd.zero_grad()
        for p, (m, k) in zip(params, [(m, k) for m in SHAPES for k in (0, 1)]):
            p.grad = -(sum(s.factors[m][k] for s in shards) / 2 - p.detach())
        sgd.step()
        got = [t for m in SHAPES for t in new[m]]
        assert all(torch.allclose(g, p.detach(), atol=1e-5) for g, p in zip(got, params))
        assert record["space"] == "factors" and record["factor_error"] > 0  # the cross terms, measured
        current = Adapter("global", None, start.config, new)
