"""kit/loss.py: the LM head at labelled positions only gives the full computation's loss and gradients.

    .venv/bin/python -m pytest -q tests/test_loss.py

CPU, no network, the tiny model with LoRA (r=8, all-linear, dropout 0 so two passes see one function).
The reference is the model's own loss (`model(**batch, labels=...)`: transformers' ForCausalLMLoss over
every position); both are compared in fp32 at <= 1e-5 relative, padded and packed, with and without
`num_items_in_batch`, and through the Trainer over a gradient-accumulated step.
"""

from __future__ import annotations

import copy

import pytest
import torch
from test_collator import random_examples

import kit.attention  # noqa: F401  registers "kit_packed_sdpa"
from kit.collator import SFTCollator
from kit.config import load_config
from kit.loss import labelled_loss, labelled_loss_trainer, labelled_positions, supports_logits_to_keep
from kit.model import add_lora, load_base_model

RELATIVE = 1e-5
LENGTHS = [37, 5, 64, 18, 2, 51]


@pytest.fixture(scope="module")
def lora_model():
    cfg = load_config("cpu-tiny", ["lora.dropout=0.0"])
    model = add_lora(load_base_model(cfg), cfg)
    model.train()
    return model


def lora_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def loss_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    loss = compute()
    loss.backward()
    return loss.detach(), lora_grads(model)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def batch(tokenizer, packed: bool):
    examples = random_examples(LENGTHS)
    return SFTCollator(tokenizer, padding_free=packed)(examples)


@pytest.mark.parametrize("num_items", [None, 77])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_the_loss_and_lora_gradients_equal_the_full_heads(lora_model, tokenizer, packed, num_items):
    inputs = batch(tokenizer, packed)  # packed: one row, position_ids from 0 per example (sdpa isolates them)

    def full():
        out = lora_model(**inputs, use_cache=False, **({"num_items_in_batch": num_items} if num_items else {}))
        return out.loss

    reference, reference_grads = loss_and_grads(lora_model, full)
    ours, our_grads = loss_and_grads(lora_model, lambda: labelled_loss(lora_model, inputs, num_items)[0])
    assert abs(ours - reference) / abs(reference) <= RELATIVE, (ours, reference)
    assert reference_grads.keys() == our_grads.keys() and len(our_grads) > 0
    worst = max(relative(our_grads[n], reference_grads[n]) for n in our_grads if reference_grads[n].norm() > 0)
    assert worst <= RELATIVE, worst


def test_the_head_runs_only_before_labelled_tokens(lora_model, tokenizer):
    inputs = batch(tokenizer, packed=True)
    keep = labelled_positions(inputs["labels"])
    assert len(keep) == int((inputs["labels"][:, 1:] != -100).sum())  # one row: one position per label
    assert len(keep) < inputs["input_ids"].shape[1] * 0.8  # the prompts' thirds are never scored
    _, outputs = labelled_loss(lora_model, inputs)
    assert outputs.logits.shape[1] == len(keep)
    assert supports_logits_to_keep(lora_model)


def test_a_batch_with_no_labelled_token_has_zero_loss_and_zero_gradients(lora_model, tokenizer):
    inputs = batch(tokenizer, packed=False)
    inputs["labels"] = torch.full_like(inputs["labels"], -100)
    loss, grads = loss_and_grads(lora_model, lambda: labelled_loss(lora_model, inputs, 10)[0])
    assert loss.item() == 0.0 and all(g.abs().max() == 0 for g in grads.values())


def test_a_trainer_step_with_gradient_accumulation_moves_lora_as_the_full_head_does(
    tiny_model_dir, tokenizer, tmp_path
):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    cfg = load_config("cpu-tiny", ["lora.dropout=0.0"])
    rows = random_examples(LENGTHS * 2, seed=3)
    dataset = Dataset.from_list(rows)
    results = {}
    for name, cls in (("full", Trainer), ("labelled", labelled_loss_trainer(Trainer))):
        torch.manual_seed(0)
        model = add_lora(load_base_model(cfg), cfg)
        args = TrainingArguments(
            output_dir=str(tmp_path / name),
            per_device_train_batch_size=3,
            gradient_accumulation_steps=2,
            max_steps=2,
            learning_rate=1e-3,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            seed=0,
            data_seed=0,
            dataloader_num_workers=0,
        )
        trainer = cls(model=model, args=args, train_dataset=dataset, data_collator=SFTCollator(tokenizer))
        trainer.train()
        results[name] = (
            copy.deepcopy({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}),
            [h["loss"] for h in trainer.state.log_history if "loss" in h],
        )
    full, labelled = results["full"], results["labelled"]
    assert labelled[1] == pytest.approx(full[1], rel=RELATIVE)
    assert max(relative(labelled[0][n], full[0][n]) for n in full[0]) <= 1e-4  # after two AdamW steps


def test_eval_loss_with_the_head_at_labels_is_the_full_heads(lora_model, tokenizer):
    from kit.evaluate import eval_loss

    chats = [
        [{"role": "user", "content": f"Size of flat {i}?"}, {"role": "assistant", "content": f'{{"m2": {40 + i}}}'}]
        for i in range(5)
    ]
    ours = eval_loss(lora_model, tokenizer, chats, max_length=64, batch_size=2)

    class FullHead(torch.nn.Module):  # the same model seen without logits_to_keep in its forward
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, **kwargs):
            return self.model(**kwargs)

    assert not supports_logits_to_keep(FullHead(lora_model))
    assert ours == pytest.approx(
        eval_loss(FullHead(lora_model), tokenizer, chats, max_length=64, batch_size=2), rel=1e-6
    )
