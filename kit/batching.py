"""Which examples share a batch: token-budget batches for padding-free packing, length groups for padding.

Owns: the order and grouping of example indices, never the tensors (kit/collator.py makes those).
Tests: tests/test_batching.py (`.venv/bin/python -m pytest -q tests/test_batching.py`, no model, ~2 s).

    sampler = TokenBudgetBatchSampler(dataset["length"], max_tokens_per_batch=4096, seed=0)
    loader = packing_dataloader(dataset, SFTCollator(tokenizer, padding_free=True), 4096, seed=0)
    order = length_grouped_indices(dataset["length"], batch_size=8, seed=0)   # padded mode

Padding-free: a packed batch costs what its real tokens cost, so the natural size of a batch is a
number of tokens, not of examples. TokenBudgetBatchSampler packs examples into batches of at most
`max_tokens_per_batch` tokens. An example longer than the budget is an error at construction: the
budget is what bounds activation memory, so silently letting one batch exceed it would turn into an
out-of-memory error hours into a run; it is caught before the first step instead (tokenize with
data.max_length <= max_tokens_per_batch).

The grouping is computed once (from `seed`); each epoch only reshuffles the order of the batches
(from seed + epoch). Packed examples never see each other, so the grouping only decides which
examples share a micro-step; keeping it fixed makes len() the same every epoch, which the Trainer's
resume arithmetic needs (it computes epochs_trained = global_step // steps_per_epoch from the
first epoch's length and skips steps_in_epoch batches of a re-created, identical epoch).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

# How many partly filled batches stay open while packing. First-fit over 16 open batches fills batches
# to 99.7% on a chat-like mix (log-normal lengths, mean 250, budget 4096) where next-fit (one open batch)
# fills 95%, and it stays O(n) with the random order kept (a global sort would put long examples together).
OPEN_BATCHES = 16


class TokenBudgetBatchSampler:
    """Batches of example indices whose lengths sum to at most `max_tokens_per_batch`.

    A batch sampler (pass it as DataLoader(batch_sampler=...)): iterating yields lists of indices.
    Deterministic for a seed; `set_epoch(e)` reshuffles the batch order for epoch e (the Trainer and
    accelerate's DataLoaderShard call it). With shuffle=False the examples are packed in dataset
    order and the batches come in that order every epoch.
    """

    def __init__(self, lengths: Sequence[int], max_tokens_per_batch: int, shuffle: bool = True, seed: int = 0):
        lengths = [int(n) for n in lengths]
        if max_tokens_per_batch < 1:
            raise ValueError(f"max_tokens_per_batch must be a positive number of tokens, got {max_tokens_per_batch}")
        if not lengths:
            raise ValueError("TokenBudgetBatchSampler got no examples (lengths is empty)")
        too_long = [i for i, n in enumerate(lengths) if n > max_tokens_per_batch]
        if too_long:
            longest = max(too_long, key=lambda i: lengths[i])
            raise ValueError(
                f"{len(too_long)} example(s) are longer than max_tokens_per_batch={max_tokens_per_batch} "
                f"(the longest, index {longest}, has {lengths[longest]} tokens). Fix: raise "
                f"max_tokens_per_batch to at least {lengths[longest]}, or tokenize with "
                f"data.max_length <= {max_tokens_per_batch}."
            )
        self.lengths = lengths
        self.max_tokens_per_batch = max_tokens_per_batch
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.batches = self._pack()

    def _pack(self) -> list[list[int]]:
        order = range(len(self.lengths))
        if self.shuffle:
            order = torch.randperm(len(self.lengths), generator=torch.Generator().manual_seed(self.seed)).tolist()
        done, open_batches, room = [], [], []
        for i in order:
            n = self.lengths[i]
            for k, free in enumerate(room):
                if n <= free:
                    open_batches[k].append(i)
                    room[k] -= n
                    break
            else:
                open_batches.append([i])
                room.append(self.max_tokens_per_batch - n)
                if len(open_batches) > OPEN_BATCHES:  # close the oldest: it had the most chances to fill
                    done.append(open_batches.pop(0))
                    room.pop(0)
        return done + open_batches

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        if not self.shuffle:
            yield from (list(b) for b in self.batches)
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        for k in torch.randperm(len(self.batches), generator=generator).tolist():
            yield list(self.batches[k])

    def __len__(self) -> int:
        return len(self.batches)


def length_grouped_indices(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """Indices in an order where each run of `batch_size` has similar lengths (padded mode).

    This is transformers' own `get_length_grouped_indices` (the order LengthGroupedSampler yields:
    random permutation, mega-batches of 50 batches at most sorted by length, the longest batch first
    so an out-of-memory error comes at step 1), with its randomness taken from `seed` instead of the
    global torch RNG. In the Trainer, the same order comes from
    TrainingArguments(train_sampling_strategy="group_by_length") with the dataset's "length" column.
    """
    from transformers.trainer_pt_utils import get_length_grouped_indices

    generator = torch.Generator().manual_seed(seed)
    return get_length_grouped_indices([int(n) for n in lengths], batch_size, generator=generator)


def example_lengths(dataset) -> list[int]:
    """The "length" column kit.data.tokenize writes, or len(input_ids) for datasets without it."""
    column_names = getattr(dataset, "column_names", None) or []
    if "length" in column_names:
        return [int(n) for n in dataset["length"]]
    return [len(example["input_ids"]) for example in dataset]


def packing_dataloader(dataset, collator, max_tokens_per_batch: int, seed: int = 0, shuffle: bool = True):
    """A torch DataLoader that yields padding-free batches of at most `max_tokens_per_batch` tokens."""
    if not getattr(collator, "padding_free", False):
        raise ValueError(
            "packing_dataloader needs a padding-free collator: SFTCollator(tokenizer, padding_free=True). "
            "A padded collator would pad every example of a token-budget batch to its longest one."
        )
    sampler = TokenBudgetBatchSampler(example_lengths(dataset), max_tokens_per_batch, shuffle=shuffle, seed=seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collator, num_workers=0)


def packed_trainer_class():
    """A Trainer whose micro-batches are token-budget packs.

    transformers' samplers bound examples per batch, never tokens, so the train dataloader is
    replaced; everything else (resume's batch skipping, epochs, gradient accumulation, DDP
    sharding by accelerate) stays the Trainer's own. Built lazily so importing this module
    doesn't import transformers.
    """
    from transformers import Trainer

    class PackedTrainer(Trainer):
        def __init__(self, *args, max_tokens_per_batch: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.max_tokens_per_batch = max_tokens_per_batch

        def get_train_dataloader(self):
            loader = packing_dataloader(
                self.train_dataset, self.data_collator, self.max_tokens_per_batch, seed=self.args.data_seed
            )
            return self.accelerator.prepare(loader)

    return PackedTrainer
