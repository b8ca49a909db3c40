"""Train one shard: LoRA SFT with the Trainer, checkpoints, resume, final adapter and metrics.

    python -m kit train --preset cpu-tiny --data shards/ --shard 0 --output runs/demo
    metrics = train_shard(load_config("cpu-tiny"), "shards/", 0, "runs/demo")

Output, under `OUTPUT/shard-II/`:

    checkpoint-N/     Trainer checkpoints; `COMPLETE` inside once fully written
    adapter/          the final PEFT adapter (PeftModel.from_pretrained loads it)
    metrics.json      eval_loss, json_valid_rate, train_tokens, seconds, ...
    status.json       step, max_steps, loss, state (running|done|stopped_for_time|failed)
    eval_generations.jsonl   the greedy answers behind json_valid_rate

Running the same command again resumes from the newest complete checkpoint (the
Trainer restores optimizer, scheduler, RNG and data position from it), so an
interrupted run ends with the same adapter as an uninterrupted one. A shard
already done is not trained again.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from kit.callbacks import CheckpointMarker, StatusCallback, StatusFile
from kit.checkpoints import latest_complete_checkpoint, remove_incomplete_checkpoints
from kit.collator import SFTCollator
from kit.config import RunConfig, kit_cache_dir
from kit.data.records import to_messages
from kit.data.shards import load_eval, load_shard
from kit.data.tokenize import encode_records
from kit.evaluate import evaluate_model
from kit.files import read_json, write_json_atomic
from kit.model import add_lora, load_base_model, load_tokenizer

ADAPTER_DIR = "adapter"
ADAPTER_INFO = "kit_adapter.json"


def shard_dir(output: str | Path, shard: int) -> Path:
    return Path(output) / f"shard-{shard:02d}"


def training_arguments(cfg: RunConfig, run_dir: Path):
    from transformers import TrainingArguments

    t = cfg.train
    return TrainingArguments(
        output_dir=str(run_dir),
        max_steps=t.max_steps,
        per_device_train_batch_size=t.micro_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        optim=t.optim,
        fp16=t.fp16,
        bf16=t.bf16,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        report_to="none",
        remove_unused_columns=False,  # our collator reads input_ids/labels itself
        include_num_input_tokens_seen="non_padding",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,  # status.json and the log lines carry progress; a bar per shard is noise under papermill
    )


def train_shard(cfg: RunConfig, data_dir: str | Path, shard: int, output: str | Path, callbacks=()) -> dict:
    """Train (or resume, or skip if done) one shard and return its metrics."""
    started = time.monotonic()
    run_dir = shard_dir(output, shard)
    status = StatusFile(run_dir / "status.json", shard)
    if status.read().get("state") == "done" and (run_dir / "metrics.json").is_file():
        print(f"shard {shard}: already done ({run_dir}); nothing to train")
        return read_json(run_dir / "metrics.json")

    records = load_shard(data_dir, shard)  # checks the index and the checksum first
    eval_records = load_eval(data_dir)
    tokenizer = load_tokenizer(cfg)
    dataset, data_stats = encode_records(
        tokenizer,
        [to_messages(r) for r in records],
        max_length=cfg.data.max_length,
        last_turn_only=cfg.data.last_turn_only,
        cache_dir=kit_cache_dir() / "tokenized",
    )
    if len(dataset) == 0:
        raise ValueError(f"shard {shard}: no example has an assistant token within data.max_length={cfg.data.max_length}")

    run_dir.mkdir(parents=True, exist_ok=True)
    for path in remove_incomplete_checkpoints(run_dir):
        print(f"removed {path.name}: it was not completely written (interrupted save)")
    resume = latest_complete_checkpoint(run_dir)
    print(f"shard {shard}: {len(dataset)} examples ({data_stats}); " + (f"resuming from {resume.name}" if resume else "starting"))

    model = add_lora(load_base_model(cfg), cfg)
    from transformers import Trainer

    trainer = Trainer(
        model=model,
        args=training_arguments(cfg, run_dir),
        train_dataset=dataset,
        data_collator=SFTCollator(tokenizer),
        callbacks=[CheckpointMarker(), StatusCallback(status), *callbacks],
    )
    status.update(state="running", max_steps=cfg.train.max_steps)
    try:
        result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    except BaseException as e:
        status.update(state="failed", error=f"{type(e).__name__}: {e}"[:500])
        raise

    adapter_dir = save_adapter(model, run_dir, cfg, shard, n_examples=len(dataset))
    evaluation = evaluate_model(model, tokenizer, eval_records, cfg.eval, cfg.data.max_length)
    with (run_dir / "eval_generations.jsonl").open("w", encoding="utf-8") as f:
        for answer in evaluation.pop("generations"):
            f.write(json.dumps({"answer": answer}, ensure_ascii=False) + "\n")
    metrics = {
        "shard": shard,
        **evaluation,
        "train_loss": result.training_loss,
        "train_tokens": trainer.state.num_input_tokens_seen,
        "train_examples": len(dataset),
        **{f"data_{k}": v for k, v in data_stats.items() if k != "kept"},
        "steps": trainer.state.global_step,
        "resumed_from_step": int(resume.name.split("-")[1]) if resume else None,
        "seconds": round(time.monotonic() - started, 1),
        "adapter": str(adapter_dir),
        "config": cfg.to_dict(),
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    status.update(state="done", step=trainer.state.global_step, eval_loss=metrics["eval_loss"])
    print(
        f"shard {shard}: done in {metrics['seconds']} s; eval_loss {metrics['eval_loss']:.4f}, "
        f"json_valid_rate {metrics['json_valid_rate']:.2%}, adapter -> {adapter_dir}"
    )
    return metrics


def save_adapter(model, run_dir: Path, cfg: RunConfig, shard: int, n_examples: int) -> Path:
    """Write the adapter to a temp folder and rename it into place: never half an adapter."""
    final = run_dir / ADAPTER_DIR
    tmp = run_dir / f".{ADAPTER_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    # What the merge needs to weigh and check adapters, beside PEFT's own config.
    write_json_atomic(
        tmp / ADAPTER_INFO,
        {"shard": shard, "train_examples": n_examples, "base_model": cfg.model.name_or_path, "revision": cfg.model.revision},
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
