"""The masked SFT loss with the LM head run only where a label is: logits at labelled positions.

    loss = labelled_loss(model, batch)                    # batch: input_ids, labels, attention_mask/position_ids
    trainer_cls = labelled_loss_trainer(Trainer)          # a Trainer subclass whose compute_loss does the same

With assistant-only labels most positions of a row are never scored, yet a causal LM computes the
LM head (a 49k-152k-way matmul) and keeps its fp32 logits for every position: one 8k-token packed
row of a 152k-vocabulary model holds ~5 GB of logits on a T4. transformers' `logits_to_keep` takes a
tensor of sequence positions, so the head runs only at the positions whose next token is labelled
(the union over the rows of a batch); the loss is the same cross-entropy, reduced as the model's own
loss is (a sum over `num_items_in_batch` when the Trainer passes it, else the mean), so gradient
accumulation and DDP scale it exactly as before. tests/test_loss.py checks loss and LoRA gradients
against the full computation (<= 1e-5 relative).

A model whose forward takes no `logits_to_keep` runs the full head and the loss is taken at the same
positions (`supports_logits_to_keep`); under DataParallel (which would split the position tensor
across GPUs) the Trainer's own loss runs.
"""

from __future__ import annotations

import inspect

import torch

IGNORE_INDEX = -100


def _causal_lm(model):
    """The transformers model under PEFT (and DDP) wrappers: the one whose forward computes the head."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif hasattr(model, "module") and isinstance(model.module, torch.nn.Module):  # DDP
            model = model.module
    return model


def supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(_causal_lm(model).forward).parameters
    except (TypeError, ValueError):
        return False


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions p (in the sequence dimension) whose next token carries a label in any row."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)


def labelled_loss(model, inputs: dict, num_items_in_batch=None):
    """(loss, outputs): the causal-LM cross-entropy over the labelled tokens, the head run only before them."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = labelled_positions(labels)
    if supports_logits_to_keep(model):
        outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
        logits = outputs.logits
    else:  # the full head, then the same positions: the same loss
        outputs = model(**inputs, use_cache=False)
        logits = outputs.logits[:, keep]
    logits = logits.float()  # as transformers' ForCausalLMLoss: the loss in fp32 whatever the weights
    targets = labels[:, 1:][:, keep].to(logits.device)
    reduction = "sum" if num_items_in_batch is not None else "mean"
    if targets.numel() == 0 or not (targets != IGNORE_INDEX).any():
        loss = logits.sum() * 0.0  # no trained token: a zero that still has a graph
    else:
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction
        )
    if num_items_in_batch is not None:
        loss = loss / (
            num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
        )
    return loss, outputs


def labelled_loss_trainer(base):
    """A subclass of the Trainer class `base` whose loss runs the LM head at labelled positions only."""

    class LabelledLossTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            full_head = (
                "labels" not in inputs
                # Only where the model's own loss would be normalised as this one is, so that the
                # Trainer scales it for gradient accumulation the same way.
                or not self.model_accepts_loss_kwargs
                or self.args.n_gpu > 1  # DataParallel would scatter the position tensor
                or self.label_smoother is not None
                or self.compute_loss_func is not None
            )
            if full_head:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss, outputs = labelled_loss(model, inputs, num_items_in_batch)
            # The Trainer's own step for a loss normalised by num_items_in_batch (kit's DDP runs one GPU
            # per process): each rank's share is of the tokens of all ranks, which DDP then averages.
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

    LabelledLossTrainer.__name__ = f"LabelledLoss{base.__name__}"
    return LabelledLossTrainer
