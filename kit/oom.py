"""Out of memory at the start of a run: halve the micro-batch, double the accumulation, try again.

A packed run's micro-batch is its token budget (train.max_tokens_per_batch), halved down to one
max-length example; a padded run's is train.micro_batch_size, halved down to 1.

    trainer, result = train_with_oom_backoff(make_trainer, cfg, resume_dir)

`make_trainer(cfg)` builds a fresh model and Trainer from cfg (a retry must not
reuse a model that a partial step may have touched). The global batch
(micro_batch_size x grad_accum x GPUs) stays the same, so the run trains the
same examples per optimizer step and its loss curve is comparable; only the
memory peak drops. Backoff applies to the first `PROBE_STEPS` steps after
(re)start, where an OOM means "this micro-batch does not fit"; later it is a
real bug (a leak, an outlier length) and is raised. It stops at micro-batch 1.

Single process only: under DDP one rank's OOM can't be retried alone (the
others would wait in an all-reduce), so torchrun stops the run and the message
says to lower train.micro_batch_size.

Tested by tests/test_oom.py with an injected OOM (no GPU needed).
"""

from __future__ import annotations

import gc
from pathlib import Path

from kit.checkpoints import checkpoint_step
from kit.distributed import world_size

PROBE_STEPS = 5


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    return isinstance(err, oom_type) or (isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def can_halve(cfg) -> bool:
    """A smaller micro-batch is left: 2+ examples padded, or a packed budget of 2+ max-length examples."""
    if cfg.data.padding_free:
        return cfg.tokens_per_batch() // 2 >= cfg.data.max_length
    return cfg.train.micro_batch_size > 1


def halve_micro_batch(cfg) -> str:
    """Halve the micro-batch (packed: train.max_tokens_per_batch; padded: train.micro_batch_size) and
    double train.grad_accum in place, so a step trains as many tokens or examples; return what was done."""
    t = cfg.train
    if cfg.data.padding_free:
        budget, accum = cfg.tokens_per_batch(), t.grad_accum
        t.max_tokens_per_batch, t.grad_accum = budget // 2, accum * 2
        return (
            f"out of memory at {budget} tokens a micro-batch x accumulation {accum}: retrying with "
            f"{t.max_tokens_per_batch} x {t.grad_accum} (about the same tokens per step)"
        )
    before = (t.micro_batch_size, t.grad_accum)
    t.micro_batch_size //= 2
    t.grad_accum *= 2
    return (
        f"out of memory at micro-batch {before[0]} x accumulation {before[1]}: retrying with "
        f"{t.micro_batch_size} x {t.grad_accum} (same global batch {t.micro_batch_size * t.grad_accum} per GPU)"
    )


def train_with_oom_backoff(make_trainer, cfg, resume, find_resume=None, log=print):
    """Run `make_trainer(cfg).train(resume)`; on an early OOM halve the micro-batch and retry from scratch
    (or from `find_resume()`, the newest complete checkpoint then). Returns (trainer, TrainOutput)."""
    distributed = world_size() > 1
    while True:
        trainer = make_trainer(cfg)
        start = checkpoint_step(Path(resume)) if resume else 0  # the step the Trainer restores, before train() does
        try:
            return trainer, trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            early = trainer.state.global_step - start < PROBE_STEPS
            if distributed or not early or not can_halve(cfg):
                smallest = "at the smallest micro-batch (one max-length example)"
                why = "under DDP" if distributed else "after the first steps" if not early else smallest
                knob = "train.max_tokens_per_batch" if cfg.data.padding_free else "train.micro_batch_size"
                raise type(err)(
                    f"{err}\nkit: out of memory {why}; lower {knob} (and raise "
                    "train.grad_accum to keep the batch), shorten data.max_length, or turn on "
                    "model.gradient_checkpointing"
                ) from err
            log(halve_micro_batch(cfg))
            del trainer
            _free_memory()
            if find_resume is not None:
                resume = find_resume()


def _free_memory() -> None:
    import torch

    gc.collect()  # the failed step's activations are only freed once nothing references them
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
