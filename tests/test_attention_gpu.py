"""The packing leak test on a GPU, for each attention path a GPU preset's `auto` can pick with
data.padding_free: kit_packed_sdpa (CUDA's SDPA kernels) and FlashAttention-2's varlen path
(compute capability >= 8.0 with flash_attn installed). Skipped where that hardware is not there;
scripts/bench_gpu.sh runs this file on the GPU machine.

    .venv/bin/python -m pytest -q tests/test_attention_gpu.py
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_collator import IGNORE_INDEX, LENGTHS, random_examples

import kit.attention  # noqa: F401  registers "kit_packed_sdpa"
from kit.collator import SFTCollator

CUDA = torch.cuda.is_available()
AMPERE = CUDA and torch.cuda.get_device_capability() >= (8, 0)
FLASH = AMPERE and importlib.util.find_spec("flash_attn") is not None
# bf16 logits of a random tiny model: packed and alone differ by kernel rounding only, far below a leak
# (a leak moves an example's loss by >0.1 nats: tests/test_collator.py's broken cases).
BF16_TOLERANCE = 2e-2


def losses(model, examples, tokenizer, packed: bool) -> list[float]:
    out = []
    if packed:
        batch = SFTCollator(tokenizer, padding_free=True)(examples)
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"].cuda(), position_ids=batch["position_ids"].cuda(), use_cache=False
            ).logits.float()
        labels, start = batch["labels"][0].cuda(), 0
        for e in examples:
            n = len(e["input_ids"])
            piece = torch.nn.functional.cross_entropy(
                logits[0, start : start + n - 1], labels[start + 1 : start + n], ignore_index=IGNORE_INDEX
            )
            out.append(piece.item())
            start += n
        return out
    for e in examples:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([e["input_ids"]]).cuda(), use_cache=False).logits.float()
        labels = torch.tensor(e["labels"]).cuda()
        out.append(torch.nn.functional.cross_entropy(logits[0, :-1], labels[1:], ignore_index=IGNORE_INDEX).item())
    return out


@pytest.mark.parametrize(
    "attn_implementation",
    [
        pytest.param("kit_packed_sdpa", marks=pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")),
        pytest.param("flash_attention_2", marks=pytest.mark.skipif(not FLASH, reason="needs cc >= 8.0 and flash_attn")),
    ],
)
def test_each_packed_example_has_the_loss_it_has_alone_on_the_gpu(tiny_model_dir, tokenizer, attn_implementation):
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if AMPERE else torch.float16
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn_implementation, dtype=dtype)
    model = model.cuda().train()
    examples = random_examples(LENGTHS)
    packed, alone = losses(model, examples, tokenizer, True), losses(model, examples, tokenizer, False)
    assert max(abs(p - a) for p, a in zip(packed, alone)) <= BF16_TOLERANCE, list(zip(packed, alone))
