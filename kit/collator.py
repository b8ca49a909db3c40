"""Batches for the Trainer: padded rows, or one padding-free row of packed examples.

Owns: turning a list of tokenized examples ({"input_ids", "labels"}, as kit.data.tokenize makes them)
into model inputs. Which examples go together is kit/batching.py's job. Tests: tests/test_collator.py
(`.venv/bin/python -m pytest -q tests/test_collator.py`, CPU, no network, ~15 s).

    collate = SFTCollator(tokenizer)                       # padded to the longest in the batch
    collate = SFTCollator(tokenizer, max_length=1024)      # padded to a fixed length (benchmark baseline)
    collate = SFTCollator(tokenizer, padding_free=True)    # packed
    batch = collate([{"input_ids": [...], "labels": [...]}, ...])
    loss = model(**batch, use_cache=False).loss

Padded, two examples of lengths 3 and 2 (pad id 0):

    input_ids      [[5, 6, 7], [8, 9, 0]]
    attention_mask [[1, 1, 1], [1, 1, 0]]
    labels         [[-100, 6, 7], [-100, 9, -100]]

Padding-free, the same two examples:

    input_ids      [[5, 6, 7, 8, 9]]
    position_ids   [[0, 1, 2, 0, 1]]
    labels         [[-100, 6, 7, -100, 9]]

There is no attention_mask in the packed batch: transformers then derives the
example boundaries from position_ids restarting at 0, so no example attends to
another (only while no KV cache is built: training must run with use_cache off).
The first label of every packed example is IGNORE_INDEX so the last token of one
example is never trained to predict the first token of the next.

Exactly when transformers 5.23 isolates packed examples (masking_utils.py,
`_preprocess_mask_arguments` + `find_packed_sequence_indices`; this is what SDPA
and eager attention use): it looks for packing only if `position_ids is not None
and attention_mask is None and past_key_values is None`, and then treats every
place where position_ids do not step by +1 as the start of a new example. So:
  - any attention_mask, even all ones, turns the detection off: the row is one
    long causal sequence and examples read each other;
  - use_cache=True turns it off too, even in model.train() with an empty cache:
    LlamaModel.forward builds a DynamicCache whenever use_cache is true (it
    defaults to config.use_cache, True in most checkpoints; only gradient
    checkpointing forces it off). kit.model.load_base_model sets
    config.use_cache = False for this reason;
  - two packed examples must not continue each other's positions (they never
    do here: every example restarts at 0).
FlashAttention-2 reads the same position_ids through `_is_packed_sequence` in
modeling_flash_attention_utils.py (batch size 1, positions not one increasing
run) and turns them into cu_seqlens. kit's attn_implementation "kit_packed_sdpa"
(kit/attention.py) splits the row at the same places and runs SDPA per example,
so no T x T mask is built (tests/test_attention.py). tests/test_collator.py
checks the equality of packed and unpacked losses for sdpa and eager, and that
both ways of breaking it do leak.
"""

from __future__ import annotations

import torch

from kit.data.tokenize import IGNORE_INDEX  # one value for "not trained", where labels are made


class SFTCollator:
    """Padded (right padding, attention_mask, IGNORE_INDEX labels on pads) or padding-free batches.

    Padded mode pads to the longest example of the batch, rounded up to `pad_to_multiple_of`,
    or to `max_length` when given (what a naive script does; kept as the benchmark's baseline).
    Padding-free mode ignores both: a packed row has no pads.
    """

    def __init__(
        self,
        tokenizer,
        padding_free: bool = False,
        pad_to_multiple_of: int | None = None,
        max_length: int | None = None,
    ):
        if tokenizer.pad_token_id is None and not padding_free:
            raise ValueError(
                "the tokenizer has no pad token: set tokenizer.pad_token = tokenizer.eos_token "
                "(kit.model.load_tokenizer does this) or use padding_free=True"
            )
        if padding_free and max_length is not None:
            raise ValueError(
                f"SFTCollator(padding_free=True, max_length={max_length}): a packed row is never padded. "
                "Fix: drop max_length (bound the batch with kit.batching's max_tokens_per_batch instead)."
            )
        self.pad_id = tokenizer.pad_token_id
        self.padding_free = padding_free
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length = max_length
        if padding_free:
            from transformers import DataCollatorWithFlattening

            # transformers' own flattening collator does exactly kit's packed format: one row, labels of
            # each example with its first one replaced by separator_id, position_ids from 0 per example,
            # no attention_mask, and it ignores other columns (the dataset's "length"). Using it keeps
            # kit on the format transformers' packed-sequence detection is tested against.
            self._flatten = DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("SFTCollator got an empty batch")
        if self.padding_free:
            return self._flatten(features, return_tensors="pt")
        return self._padded(features)

    def _padded(self, features):
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        if self.max_length is not None:
            if width > self.max_length:
                raise ValueError(
                    f"an example has {width} tokens, more than SFTCollator(max_length={self.max_length}). "
                    "Fix: tokenize with the same max_length (encode_records(..., max_length=...)) "
                    "or raise max_length."
                )
            width = self.max_length
        elif self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            width = (width + m - 1) // m * m
        input_ids = torch.full((len(features), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, (f, n) in enumerate(zip(features, lengths)):
            input_ids[row, :n] = torch.as_tensor(f["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.as_tensor(f["labels"], dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
