"""kit_packed_sdpa (kit/attention.py): packed rows isolated without a T x T mask, everything else exactly sdpa.

    .venv/bin/python -m pytest -q tests/test_attention.py

CPU, no network, the 2-layer tiny model (GQA: 4 query heads, 2 key/value heads); ~1 min, most of it
the resumed training run. The leak test is tests/test_collator.py's (each packed example's loss equals
its loss alone); a spy on SDPA shows the packed path really ran (one maskless call per example and
layer), and breaking the isolation with a KV cache makes the leak test fail here as it does for sdpa.
"""

from __future__ import annotations

import os

import pytest
import torch
from test_collator import LENGTHS, TOLERANCE, alone_losses, load_tiny, per_example_losses, random_examples
from test_train import OVERRIDES, Crash, CrashAtStep, adapter_weights, max_abs_diff

import kit.attention  # noqa: F401  registers "kit_packed_sdpa"
from kit.attention import NAME, example_boundaries
from kit.collator import SFTCollator

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_boundaries_are_where_position_ids_stop_stepping_by_one():
    assert example_boundaries(torch.tensor([[0, 1, 2, 0, 1]])) == [0, 3, 5]
    assert example_boundaries(torch.tensor([[0, 0, 1, 0]])) == [0, 1, 3, 4]  # a one-token example
    assert example_boundaries(torch.tensor([[0, 1, 2, 3]])) is None  # one sequence: plain causal
    assert example_boundaries(torch.tensor([[0, 1, 0], [0, 1, 0]])) is None  # batch > 1: transformers' mask
    assert example_boundaries(None) is None


def test_each_packed_example_has_the_loss_it_has_alone(tiny_model_dir, tokenizer):
    model = load_tiny(tiny_model_dir, NAME)
    examples = random_examples(LENGTHS)
    packed = per_example_losses(model, examples, tokenizer, use_cache=False)
    alone = alone_losses(model, examples)
    assert max(abs(p - a) for p, a in zip(packed, alone)) <= TOLERANCE, list(zip(packed, alone))


def test_a_packed_row_runs_one_maskless_causal_sdpa_per_example_and_layer(tiny_model_dir, tokenizer, monkeypatch):
    """The packed path, not a fallback to transformers' T x T mask, is what the loss test measured."""
    model = load_tiny(tiny_model_dir, NAME)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, is_causal=False, **kwargs):
        calls.append((query.shape[2], key.shape[2], attn_mask is None, is_causal))
        return sdpa(query, key, value, attn_mask=attn_mask, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    per_example_losses(model, random_examples(LENGTHS), tokenizer, use_cache=False)
    assert calls == [(n, n, True, True) for n in LENGTHS] * model.config.num_hidden_layers


def test_the_leak_test_fails_when_a_kv_cache_turns_isolation_off(tiny_model_dir, tokenizer):
    """With a cache transformers treats the row as one sequence; kit_packed_sdpa must do the same."""
    model = load_tiny(tiny_model_dir, NAME)
    examples = random_examples(LENGTHS)
    packed = per_example_losses(model, examples, tokenizer, use_cache=True)
    alone = alone_losses(model, examples)
    assert max(abs(p - a) for p, a in zip(packed, alone)) > 100 * TOLERANCE
    sdpa = per_example_losses(load_tiny(tiny_model_dir, "sdpa"), examples, tokenizer, use_cache=True)
    assert max(abs(p - s) for p, s in zip(packed, sdpa)) <= TOLERANCE


def test_gradients_of_a_packed_row_equal_sdpas(tiny_model_dir, tokenizer):
    batch = SFTCollator(tokenizer, padding_free=True)(random_examples(LENGTHS))
    grads = {}
    for attn in ("sdpa", NAME):
        model = load_tiny(tiny_model_dir, attn)
        model(**batch, use_cache=False).loss.backward()
        grads[attn] = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and g.abs().max() > 0 for g in grads[NAME].values())
    assert max_abs_diff(grads[NAME], grads["sdpa"]) <= 1e-5


def test_a_padded_batch_gives_exactly_sdpas_logits(tiny_model_dir, tokenizer):
    batch = SFTCollator(tokenizer)(random_examples([9, 30, 17]))
    logits = {}
    for attn in ("sdpa", NAME):
        with torch.no_grad():
            logits[attn] = load_tiny(tiny_model_dir, attn)(**batch, use_cache=False).logits
    real = batch["attention_mask"].bool()
    assert torch.equal(logits[NAME][real], logits["sdpa"][real])


def test_generation_with_a_kv_cache_gives_exactly_sdpas_tokens_and_scores(tiny_model_dir, tokenizer):
    # Left padding, as generation needs; the second prompt is shorter, so the cache holds pads.
    prompts = torch.tensor([[101, 102, 103, 104, 105, 106], [0, 0, 0, 201, 202, 203]])
    mask = (torch.arange(6) >= torch.tensor([[0], [3]])).long()
    out = {}
    for attn in ("sdpa", NAME):
        model = load_tiny(tiny_model_dir, attn).eval()
        out[attn] = model.generate(
            input_ids=prompts,
            attention_mask=mask,
            max_new_tokens=8,
            do_sample=False,
            use_cache=True,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=0,
        )
    assert torch.equal(out[NAME].sequences, out["sdpa"].sequences)
    assert all(torch.equal(a, b) for a, b in zip(out[NAME].scores, out["sdpa"].scores))


def test_a_packed_run_with_kit_packed_sdpa_resumes_to_the_same_adapter(small_split, tmp_path, monkeypatch):
    from transformers import AttentionInterface

    from kit.config import load_config
    from kit.train import train_shard

    # Record calls through the registry, the way the model reaches the function, so the test fails if the
    # run silently trained with another implementation or never handed it a packed row without a mask.
    calls = []
    registered = AttentionInterface._global_mapping[NAME]

    def counted(module, query, key, value, attention_mask, **kwargs):
        packed = example_boundaries(kwargs.get("position_ids")) is not None
        calls.append(attention_mask is None and packed and not kwargs.get("use_cache"))
        return registered(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, NAME, counted)
    cfg = load_config(
        "cpu-tiny",
        OVERRIDES + ["data.padding_free=true", f"model.attn_implementation={NAME}", "train.max_tokens_per_batch=512"],
    )
    straight = train_shard(cfg, small_split, 0, tmp_path / "straight")
    assert any(calls), "no training step reached kit_packed_sdpa's packed path"
    with pytest.raises(Crash):
        train_shard(cfg, small_split, 0, tmp_path / "resumed", callbacks=[CrashAtStep(3)])
    resumed = train_shard(cfg, small_split, 0, tmp_path / "resumed")
    assert resumed["resumed_from_step"] == 2
    assert max_abs_diff(adapter_weights(tmp_path / "resumed"), adapter_weights(tmp_path / "straight")) <= 1e-6
    assert straight["train_tokens"] > 6 * 300  # packed: ~4 chats per 512-token step, as in test_train.py


def test_the_packed_varlen_kernel_is_used_only_on_cuda_half_precision_from_ampere():
    from kit.attention import varlen_usable

    assert not varlen_usable(torch.zeros(1, 2, 4, 8))  # CPU: the per-example loop
    assert not varlen_usable(torch.zeros(1, 2, 4, 8, dtype=torch.bfloat16))
