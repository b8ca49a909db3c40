"""Token-budget batches and length-grouped order: grouping, determinism, epochs, errors.

    .venv/bin/python -m pytest -q tests/test_batching.py

No model and no network; ~2 s.
"""

from __future__ import annotations

import random

import pytest
import torch

from kit.batching import TokenBudgetBatchSampler, length_grouped_indices, packing_dataloader
from kit.collator import SFTCollator


def chat_like_lengths(n=500, seed=0):
    rng = random.Random(seed)
    return [min(1024, max(2, int(rng.lognormvariate(5.2, 0.8)))) for _ in range(n)]


def test_every_example_is_in_exactly_one_batch_and_no_batch_exceeds_the_budget():
    lengths = chat_like_lengths()
    sampler = TokenBudgetBatchSampler(lengths, max_tokens_per_batch=2048, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 2048 for b in batches)
    assert len(batches) == len(sampler)


def test_batches_are_nearly_full_on_a_chat_like_mix():
    lengths = chat_like_lengths(2000)
    sampler = TokenBudgetBatchSampler(lengths, max_tokens_per_batch=4096, seed=0)
    fill = sum(lengths) / (len(sampler) * 4096)
    assert fill > 0.97, f"batches only {fill:.1%} full"


def test_the_same_seed_gives_the_same_batches_and_another_seed_other_ones():
    lengths = chat_like_lengths()
    a = list(TokenBudgetBatchSampler(lengths, 2048, seed=1))
    b = list(TokenBudgetBatchSampler(lengths, 2048, seed=1))
    c = list(TokenBudgetBatchSampler(lengths, 2048, seed=2))
    assert a == b
    assert a != c


def test_set_epoch_reshuffles_the_batch_order_but_keeps_the_length_for_resume():
    lengths = chat_like_lengths()
    sampler = TokenBudgetBatchSampler(lengths, 2048, seed=1)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 != epoch1
    assert sorted(map(tuple, epoch0)) == sorted(map(tuple, epoch1))
    # A resumed run re-creates the sampler and must replay epoch 1 identically to skip into it.
    again = TokenBudgetBatchSampler(lengths, 2048, seed=1)
    again.set_epoch(1)
    assert list(again) == epoch1


def test_without_shuffle_examples_are_packed_in_dataset_order():
    sampler = TokenBudgetBatchSampler([3, 3, 3, 3, 3], max_tokens_per_batch=6, shuffle=False)
    assert list(sampler) == [[0, 1], [2, 3], [4]]


def test_an_example_longer_than_the_budget_is_an_error_that_names_it_and_the_fix():
    with pytest.raises(ValueError, match=r"index 2, has 900 tokens.*max_tokens_per_batch to at least 900"):
        TokenBudgetBatchSampler([10, 20, 900, 30], max_tokens_per_batch=512)


def test_an_example_exactly_the_budget_fits_alone():
    sampler = TokenBudgetBatchSampler([512, 1, 511], max_tokens_per_batch=512, shuffle=False)
    assert sorted(map(sorted, sampler)) == [[0], [1, 2]]


def test_length_grouped_indices_put_similar_lengths_together_deterministically():
    lengths = chat_like_lengths(800)
    order = length_grouped_indices(lengths, batch_size=8, seed=0)
    assert sorted(order) == list(range(len(lengths)))
    assert order == length_grouped_indices(lengths, batch_size=8, seed=0)
    assert order != length_grouped_indices(lengths, batch_size=8, seed=1)

    def padded_tokens(indices):
        batches = [indices[k : k + 8] for k in range(0, len(indices), 8)]
        return sum(8 * max(lengths[i] for i in b) for b in batches)

    random_order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    assert padded_tokens(order) < 0.7 * padded_tokens(random_order)
    # The longest example comes first, so an out-of-memory error shows at step 1.
    assert lengths[order[0]] == max(lengths)


def test_packing_dataloader_yields_packed_rows_within_the_budget(tokenizer):
    import datasets

    lengths = [5, 9, 3, 12, 7, 4, 8]
    rows = {
        "input_ids": [list(range(10, 10 + n)) for n in lengths],
        "labels": [list(range(10, 10 + n)) for n in lengths],
        "length": lengths,
    }
    loader = packing_dataloader(datasets.Dataset.from_dict(rows), SFTCollator(tokenizer, padding_free=True), 16, seed=0)
    seen = 0
    for batch in loader:
        assert set(batch) == {"input_ids", "labels", "position_ids"}
        assert batch["input_ids"].shape[0] == 1 and batch["input_ids"].shape[1] <= 16
        seen += int((batch["position_ids"] == 0).sum())
    assert seen == len(lengths)


def test_packing_dataloader_refuses_a_padded_collator(tokenizer):
    with pytest.raises(ValueError, match="padding_free=True"):
        packing_dataloader([{"input_ids": [1], "labels": [1]}], SFTCollator(tokenizer), 16)
