"""Train one shard: LoRA SFT with the Trainer, checkpoints, resume, final adapter and metrics.

    python -m kit train --preset cpu-tiny --data shards/ --shard 0 --output runs/demo
    metrics = train_shard(load_config("cpu-tiny"), "shards/", 0, "runs/demo")

Output, under `OUTPUT/shard-II/`:

    checkpoint-N/     Trainer checkpoints; `COMPLETE` inside once fully written
    adapter/          the final PEFT adapter (PeftModel.from_pretrained loads it)
    metrics.json      eval_loss, json_valid_rate, train_tokens, seconds, kit_version, ...
    status.json       step, max_steps, loss, state (running|done|stopped_for_time|failed), kit_version
    eval_generations.jsonl   the greedy answers behind json_valid_rate

Running the same command again resumes from the newest complete checkpoint (the
Trainer restores optimizer, scheduler, RNG and data position from it), so an
interrupted run ends with the same adapter as an uninterrupted one. A shard
already done is not trained again.

With OUTPUT = hf://USER/REPO the same layout lives in a local work dir and is
mirrored to the repo by kit/sync.py (checkpoints pushed in the background,
`latest.json` pointer last, adapter + model card at the end); a fresh machine
pulls the latest complete checkpoint and continues.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from kit.batching import packed_trainer_class
from kit.budget import SessionBudget
from kit.callbacks import CheckpointMarker, StatusCallback, StatusFile
from kit.checkpoints import checkpoint_step, latest_complete_checkpoint, remove_incomplete_checkpoints
from kit.collator import SFTCollator
from kit.config import RunConfig, kit_cache_dir
from kit.data.records import to_messages
from kit.data.shards import fetch_split, load_eval, load_shard
from kit.data.tokenize import encode_records
from kit.evaluate import evaluate_model
from kit.files import read_json, write_json_atomic, write_text_atomic
from kit.launch import is_main_process, print0
from kit.merge import ADAPTER_INFO
from kit.model import add_lora, load_base_model, load_tokenizer
from kit.oom import train_with_oom_backoff
from kit.platform import check_platform_packages, quantization_in_effect, resolve_platform
from kit.progress import ProgressBar
from kit.sync import open_shard_sync
from kit.wheel import kit_version

ADAPTER_DIR = "adapter"


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
        # Packed rows have no attention_mask, and "non_padding" would then skip every token equal to
        # the pad id, which is often eos: count all (a packed row has no padding anyway).
        include_num_input_tokens_seen="all" if cfg.data.padding_free else "non_padding",
        train_sampling_strategy="group_by_length" if cfg.data.group_by_length else "random",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,  # status.json and the log lines carry progress; a bar per shard is noise under papermill
    )


def train_shard(cfg: RunConfig, data_dir: str | Path, shard: int, output: str | Path, callbacks=(),
                work_dir: str | Path | None = None, private: bool = True) -> dict:
    """Train (or resume, or skip if done) one shard and return its metrics.

    `output` may be hf://USER/REPO: then the shard trains in `work_dir` (default
    $KIT_CACHE/runs/USER--REPO) and checkpoints, status and adapter go to the
    repo (kit/sync.py); `data_dir` may be hf://datasets/USER/REPO."""
    started = time.monotonic()
    main = is_main_process()  # under torchrun only rank 0 writes status, metrics, adapter and pushes (kit/launch.py)
    resolve_platform(cfg, verbose=main)  # fills the preset's `auto` knobs for this GPU and says why
    check_platform_packages(cfg)  # a missing bitsandbytes fails here, before any download or model load
    print0(quantization_in_effect(cfg))
    sync = open_shard_sync(output, shard, work_dir, private, dataset=str(data_dir))  # token checked before any work
    run_dir = shard_dir(sync.local_output, shard)
    status = StatusFile(run_dir / "status.json", shard)
    remote_done = sync.remote_metrics()
    if remote_done is not None:
        print(f"shard {shard}: already done on {output}; nothing to train")
        return remote_done
    if status.read().get("state") == "done" and (run_dir / "metrics.json").is_file():
        print(f"shard {shard}: already done ({run_dir}); nothing to train")
        metrics = read_json(run_dir / "metrics.json")
        if main:
            sync.push_final(run_dir, metrics)  # done here but not pushed yet
        return metrics

    data_dir = fetch_split(data_dir, shard, kit_cache_dir() / "data")  # a Hub split: only this shard + eval
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
    # Under torchrun, building the arguments joins the process group; the other ranks then wait
    # here until rank 0 has cleaned up and pulled, so every rank resumes from the same checkpoint.
    with training_arguments(cfg, run_dir).main_process_first(desc="checkpoint cleanup and pull"):
        if main:
            for path in remove_incomplete_checkpoints(run_dir):
                print(f"removed {path.name}: it was not completely written (interrupted save)")
            sync.pull_latest(run_dir)  # a fresh machine continues from the remote's latest complete checkpoint
    resume = latest_complete_checkpoint(run_dir)
    print0(f"shard {shard}: {len(dataset)} examples ({data_stats}); " + (f"resuming from {resume.name}" if resume else "starting"))

    from transformers import Trainer

    budget = None
    if cfg.train.session_hours > 0:  # first callback: its on_save must run before the pusher's (kit/budget.py)
        budget = SessionBudget(cfg.train.session_hours * 3600, elapsed_s=time.monotonic() - started,
                               status=status if main else None, verbose=main)
    sync_callbacks = sync.callbacks() if main else []  # one uploader thread, kept across OOM retries

    def make_trainer(cfg):  # a fresh model each try: an OOM retry must not reuse a half-stepped one
        packed = {"max_tokens_per_batch": cfg.tokens_per_batch()} if cfg.data.padding_free else {}
        return (packed_trainer_class() if packed else Trainer)(
            **packed,
            model=add_lora(load_base_model(cfg), cfg),
            args=training_arguments(cfg, run_dir),
            train_dataset=dataset,
            data_collator=SFTCollator(tokenizer, padding_free=cfg.data.padding_free),
            # sync's pusher goes before CheckpointMarker so a test pause can stop a save before its marker.
            callbacks=[*([budget] if budget else []), *sync_callbacks, CheckpointMarker(), StatusCallback(status),
                       # The bar's ETA warns when the budget (minus its safety margin) ends training first.
                       ProgressBar(seconds_left=(lambda: budget.deadline - budget.clock() - budget.margin_s())
                                   if budget else None), *callbacks],
        )

    if main:
        status.update(state="running", max_steps=cfg.train.max_steps, kit_version=kit_version())
    try:
        trainer, result = train_with_oom_backoff(make_trainer, cfg, resume, lambda: latest_complete_checkpoint(run_dir))
    except BaseException as e:
        if main:
            status.update(state="failed", error=f"{type(e).__name__}: {e}"[:500])
        raise
    model = trainer.model
    if budget is not None and budget.stopped:
        return _stopped_for_time(trainer, budget, sync, status, run_dir, shard, cfg, started) if main else {}
    if not main:
        return {}

    adapter_dir = save_adapter(model, run_dir, cfg, shard, n_examples=len(dataset))
    evaluation = evaluate_model(model, tokenizer, eval_records, cfg.eval, cfg.data.max_length)
    write_text_atomic(run_dir / "eval_generations.jsonl",  # pushed beside the adapter: never half a file
                      "".join(json.dumps({"answer": a}, ensure_ascii=False) + "\n" for a in evaluation.pop("generations")))
    metrics = {
        "shard": shard,
        **evaluation,
        "train_loss": result.training_loss,
        "train_tokens": trainer.state.num_input_tokens_seen,
        "train_examples": len(dataset),
        **{f"data_{k}": v for k, v in data_stats.items() if k != "kept"},
        "steps": trainer.state.global_step,
        "resumed_from_step": checkpoint_step(resume) if resume else None,
        "seconds": round(time.monotonic() - started, 1),
        "kit_version": kit_version(),
        "adapter": str(adapter_dir),
        "budget": budget.report() if budget else None,
        "config": cfg.to_dict(),
    }
    write_json_atomic(run_dir / "metrics.json", metrics)
    status.update(state="done", step=trainer.state.global_step, eval_loss=metrics["eval_loss"])
    sync.push_final(run_dir, metrics)  # waits for checkpoint uploads; UploadError names what did not land
    print(
        f"shard {shard}: done in {metrics['seconds']} s; eval_loss {metrics['eval_loss']:.4f}, "
        f"json_valid_rate {metrics['json_valid_rate']:.2%}, adapter -> {adapter_dir}"
    )
    return metrics


def _stopped_for_time(trainer, budget, sync, status, run_dir: Path, shard: int, cfg: RunConfig, started: float) -> dict:
    """The budget stopped the run with a checkpoint: push it, record partial metrics, leave the shard not done."""
    step = trainer.state.global_step
    metrics = {
        "shard": shard,
        "partial": True,
        "steps": step,
        "max_steps": cfg.train.max_steps,
        "train_tokens": trainer.state.num_input_tokens_seen,
        "seconds": round(time.monotonic() - started, 1),
        "budget": budget.report(),
        "config": cfg.to_dict(),
    }
    # Not metrics.json: its presence means "done", locally and on the remote.
    write_json_atomic(run_dir / "metrics.partial.json", metrics)
    status.update(state="stopped_for_time", step=step, budget=metrics["budget"])
    missing = sync.wait_for_uploads()  # the stop's checkpoint must land before the session ends
    where = f"; NOT pushed: {', '.join(missing)}" if missing else ""
    print(f"shard {shard}: stopped for time at step {step}/{cfg.train.max_steps} with checkpoint-{step} saved{where}. "
          "Run the same command (or Run all) in a new session to continue.", flush=True)
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
        {"shard": shard, "train_examples": n_examples, "base_model": cfg.model.name_or_path, "revision": cfg.model.revision,
         "quantize": "nf4" if cfg.model.load_in_4bit else "none", "kit_version": kit_version()},
    )
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final
