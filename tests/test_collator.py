"""Padded and padding-free batches, and the proof that packed examples never see each other.

    .venv/bin/python -m pytest -q tests/test_collator.py

CPU, no network, the 2-layer tiny model; ~15 s. The leak test compares each example's loss inside
a packed row with its loss run alone; the two tests after it break the isolation on purpose (an
all-ones attention_mask, a KV cache) and show that the comparison then fails, so it can fail.
"""

from __future__ import annotations

import os
import random
from types import SimpleNamespace

import pytest
import torch

from kit.collator import IGNORE_INDEX, SFTCollator

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TOLERANCE = 1e-5


def test_the_docstring_worked_example_is_what_the_collator_returns():
    pad_zero = SimpleNamespace(pad_token_id=0)
    features = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    padded = SFTCollator(pad_zero)(features)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert padded["labels"].tolist() == [[-100, 6, 7], [-100, 9, -100]]
    packed = SFTCollator(pad_zero, padding_free=True)(features)
    assert set(packed) == {"input_ids", "position_ids", "labels"}
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert packed["labels"].tolist() == [[-100, 6, 7, -100, 9]]


def test_padded_batches_pad_right_mask_the_pads_and_ignore_their_labels(tokenizer):
    features = [
        {"input_ids": [11, 12, 13, 14], "labels": [-100, -100, 13, 14], "length": 4},
        {"input_ids": [21], "labels": [21], "length": 1},
    ]
    batch = SFTCollator(tokenizer)(features)
    assert {k: tuple(v.shape) for k, v in batch.items()} == {
        "input_ids": (2, 4),
        "attention_mask": (2, 4),
        "labels": (2, 4),
    }
    assert all(v.dtype == torch.long for v in batch.values())
    assert batch["input_ids"][1].tolist() == [21] + [tokenizer.pad_token_id] * 3
    assert batch["attention_mask"][1].tolist() == [1, 0, 0, 0]
    assert batch["labels"][1].tolist() == [21, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["labels"][0].tolist() == [-100, -100, 13, 14]


def test_pad_to_multiple_of_and_max_length_set_the_width(tokenizer):
    features = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}]
    assert SFTCollator(tokenizer, pad_to_multiple_of=8)(features)["input_ids"].shape == (1, 8)
    fixed = SFTCollator(tokenizer, max_length=1024)(features)
    assert fixed["input_ids"].shape == (1, 1024)
    assert int(fixed["attention_mask"].sum()) == 3
    assert int((fixed["labels"] != IGNORE_INDEX).sum()) == 3


def test_an_example_longer_than_max_length_is_an_error_not_a_silent_cut(tokenizer):
    with pytest.raises(ValueError, match="more than SFTCollator\\(max_length=2\\)"):
        SFTCollator(tokenizer, max_length=2)([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])


def test_a_padded_collator_without_a_pad_token_says_how_to_fix_it():
    with pytest.raises(ValueError, match="pad_token = tokenizer.eos_token"):
        SFTCollator(SimpleNamespace(pad_token_id=None))
    SFTCollator(SimpleNamespace(pad_token_id=None), padding_free=True)  # packed rows need no pad


def test_a_packed_row_restarts_positions_and_never_trains_across_a_boundary(tokenizer):
    features = random_examples([4, 1, 6])
    batch = SFTCollator(tokenizer, padding_free=True)(features)
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 0, 1, 2, 3, 4, 5]]
    assert batch["input_ids"][0].tolist() == [t for f in features for t in f["input_ids"]]
    labels = batch["labels"][0].tolist()
    assert [labels[i] for i in (0, 4, 5)] == [IGNORE_INDEX] * 3  # the first token of each example
    assert labels[6:] == features[2]["labels"][1:]


# ------------------------------------------------------------------------------------------------
# Leak test: packed per-example loss == unpacked loss
# ------------------------------------------------------------------------------------------------

LENGTHS = [37, 5, 64, 18, 2, 51]


def random_examples(lengths, seed=0):
    """Token ids with a prompt part labelled IGNORE_INDEX, as kit.data.tokenize makes them."""
    rng = random.Random(seed)
    examples = []
    for n in lengths:
        ids = [rng.randrange(3, 49152) for _ in range(n)]
        prompt = n // 3
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return examples


def load_tiny(tiny_model_dir, attn_implementation):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn_implementation)
    assert model.config.attention_dropout == 0.0  # dropout would make two runs differ for its own reason
    model.train()  # the state training runs in; isolation must hold there, not only in eval
    return model


def token_losses(logits, labels):
    """Loss of every label position (the model's own shift: logits[t] predicts labels[t + 1])."""
    return torch.nn.functional.cross_entropy(
        logits[0, :-1].float(), labels[0, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )


def per_example_losses(model, examples, tokenizer, **forward_kwargs):
    batch = SFTCollator(tokenizer, padding_free=True)(examples)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], **forward_kwargs).logits
    losses, labels = token_losses(logits, batch["labels"]), batch["labels"][0, 1:]
    out, start = [], 0
    for e in examples:
        # Label positions start+1 .. start+n-1 belong to this example (start itself is IGNORE_INDEX).
        span = slice(start, start + len(e["input_ids"]) - 1)
        trained = labels[span] != IGNORE_INDEX
        out.append(losses[span][trained].mean().item())
        start += len(e["input_ids"])
    return out


def alone_losses(model, examples):
    out = []
    for e in examples:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([e["input_ids"]]), use_cache=False).logits
        labels = torch.tensor([e["labels"]])
        trained = labels[0, 1:] != IGNORE_INDEX
        out.append(token_losses(logits, labels)[trained].mean().item())
    return out


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_each_packed_example_has_the_loss_it_has_alone(tiny_model_dir, tokenizer, attn_implementation):
    model = load_tiny(tiny_model_dir, attn_implementation)
    examples = random_examples(LENGTHS)
    packed = per_example_losses(model, examples, tokenizer, use_cache=False)
    alone = alone_losses(model, examples)
    assert max(abs(p - a) for p, a in zip(packed, alone)) <= TOLERANCE, list(zip(packed, alone))


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize(
    "breaking",
    [
        pytest.param({"use_cache": False, "attention_mask": "ones"}, id="all-ones attention_mask"),
        pytest.param({"use_cache": True}, id="use_cache on in train mode"),
    ],
)
def test_the_leak_test_fails_when_isolation_is_broken(tiny_model_dir, tokenizer, attn_implementation, breaking):
    """Either an attention_mask or a KV cache turns off transformers' packed-sequence detection."""
    model = load_tiny(tiny_model_dir, attn_implementation)
    examples = random_examples(LENGTHS)
    kwargs = dict(breaking)
    if kwargs.get("attention_mask") == "ones":
        kwargs["attention_mask"] = torch.ones(1, sum(LENGTHS), dtype=torch.long)
    packed = per_example_losses(model, examples, tokenizer, **kwargs)
    alone = alone_losses(model, examples)
    assert alone[0] == pytest.approx(packed[0], abs=TOLERANCE)  # the first example has nothing before it
    assert max(abs(p - a) for p, a in zip(packed, alone)) > 100 * TOLERANCE


def test_the_model_default_of_use_cache_leaks_unless_kit_turns_it_off(tiny_model_dir, tokenizer):
    """config.use_cache is True in the checkpoint and model.train() does not switch it off in 5.23:
    kit.model.load_base_model sets config.use_cache = False, which this shows is needed."""
    model = load_tiny(tiny_model_dir, "sdpa")
    assert model.config.use_cache is True
    examples = random_examples(LENGTHS)
    alone = alone_losses(model, examples)
    leaky = per_example_losses(model, examples, tokenizer)
    assert max(abs(p - a) for p, a in zip(leaky, alone)) > 100 * TOLERANCE
    model.config.use_cache = False
    isolated = per_example_losses(model, examples, tokenizer)
    assert max(abs(p - a) for p, a in zip(isolated, alone)) <= TOLERANCE
