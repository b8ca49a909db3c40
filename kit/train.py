"""Train one shard: LoRA SFT with the Trainer, checkpoints, resume, final adapter and metrics.

    python -m kit train --preset cpu-tiny --data shards/ --shard 0 --output runs/demo
    metrics = train_shard(load_config("cpu-tiny"), "shards/", 0, "runs/demo")

Output, under `OUTPUT/shard-II/` (kit/layout.py):

    checkpoint-N/     Trainer checkpoints; `COMPLETE` inside once fully written
    adapter/          the final PEFT adapter (PeftModel.from_pretrained loads it)
    metrics.json      eval_loss, json_valid_rate, train_tokens, seconds, kit_version, ...
    status.json       step, max_steps, loss, state (running|done|stopped_for_time|failed), kit_version
    eval_generations.jsonl   the greedy answers behind json_valid_rate

Running the same command again resumes from the newest complete checkpoint (the
Trainer restores optimizer, scheduler, RNG and data position from it), so an
interrupted run ends with the same adapter as an uninterrupted one. A shard
already done is not trained again.

The steps, in order: check the platform and the destination (`open_shard_sync`:
a missing token fails before any work), stop early if the shard is done
(`finished_metrics`), load and tokenize the data (`load_shard_data`), take the
shard's lease on a remote (kit/lease.py: a second live session on the shard
stops here, and a heartbeat pushes status.json from now on), find the
checkpoint to resume (`find_resume`), train (`ShardRun`, which owns the
Trainer's callbacks and their order), then save, evaluate and push (`finish`).

With OUTPUT = hf://USER/REPO the same layout lives in a local work dir and is
mirrored to the repo by kit/sync.py (checkpoints pushed in the background,
`latest.json` pointer last, adapter + model card at the end); a fresh machine
pulls the latest complete checkpoint and continues.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kit.batching import packed_trainer_class
from kit.budget import FinalReserve, SessionBudget
from kit.callbacks import CheckpointMarker, StatusCallback, StatusFile
from kit.checkpoints import (
    checkpoint_step,
    latest_complete_checkpoint,
    newest_intact_checkpoint,
    remove_incomplete_checkpoints,
)
from kit.collator import SFTCollator
from kit.config import RunConfig, config_warnings
from kit.data.prompts import prompt_recipe
from kit.data.records import to_messages
from kit.data.shards import fetch_split, load_eval, load_shard, read_manifest
from kit.data.tokenize import encode_records
from kit.distributed import is_main_process, print0, world_size
from kit.errors import DataError, KitError
from kit.evaluate import evaluate_model, generate_answers
from kit.files import folder_written_whole, read_json, write_json_atomic, write_text_atomic
from kit.identity import IdentityStamp, check_resume, finished_differences, run_identity
from kit.layout import ADAPTER_CONFIG, ADAPTER_INFO, ADAPTER_WEIGHTS, ShardPaths, cache_folder, round_folder, shard_file
from kit.loss import labelled_loss_trainer
from kit.model import add_lora, load_base_model, load_tokenizer
from kit.oom import train_with_oom_backoff
from kit.platform import check_platform_packages, quantization_in_effect, resolve_platform
from kit.progress import ProgressBar
from kit.remote import FolderRemote
from kit.round_store import RoundStore
from kit.rounds import Outer, RoundBoundary, RoundStart, checkpoint_round
from kit.sync import ShardSync, open_shard_sync
from kit.trackers import (
    TrackerNames,
    check_tracker_packages,
    tracker_arguments,
    tracker_callbacks,
    tracker_names,
    tracker_runs,
)
from kit.wheel import kit_version


def training_arguments(cfg: RunConfig, run_dir: Path, trackers: TrackerNames | None = None):
    """The Trainer's arguments; `trackers` names the run for train.report_to (none without it)."""
    from transformers import TrainingArguments

    t = cfg.train
    reporting = tracker_arguments(cfg, trackers) if trackers else {"report_to": "none"}
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
        **reporting,
        remove_unused_columns=False,  # our collator reads input_ids/labels itself
        # Packed rows have no attention_mask, and "non_padding" would then skip every token equal to
        # the pad id, which is often eos: count all (a packed row has no padding anyway).
        include_num_input_tokens_seen="all" if cfg.data.padding_free else "non_padding",
        train_sampling_strategy="group_by_length" if cfg.data.group_by_length else "random",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,  # status.json and the log lines carry progress; a bar per shard is noise under papermill
    )


def build_trainer(
    cfg: RunConfig,
    dataset,
    tokenizer,
    run_dir: Path,
    callbacks=(),
    base_model=None,
    trackers: TrackerNames | None = None,
):
    """The Trainer a shard trains with (scripts/bench_peers.py and bench_gpu.py time this same one): LoRA
    on a freshly loaded base (or `base_model`), kit's collator, token-budget packs when
    data.padding_free, the LM head at labels only; `trackers` turns on train.report_to (kit/trackers.py)."""
    from transformers import Trainer

    packed = {"max_tokens_per_batch": cfg.tokens_per_batch()} if cfg.data.padding_free else {}
    trainer_class = labelled_loss_trainer(packed_trainer_class() if packed else Trainer)  # kit/loss.py
    return trainer_class(
        **packed,
        model=add_lora(base_model if base_model is not None else load_base_model(cfg), cfg),
        args=training_arguments(cfg, run_dir, trackers),
        train_dataset=dataset,
        data_collator=SFTCollator(tokenizer, padding_free=cfg.data.padding_free),
        callbacks=[*callbacks, *(tracker_callbacks(cfg, run_dir) if trackers else [])],
    )


def train_shard(
    cfg: RunConfig,
    data_dir: str | Path,
    shard: int,
    output: str | Path,
    callbacks=(),
    work_dir: str | Path | None = None,
    private: bool = True,
    take_over: bool = False,
) -> dict:
    """Train (or resume, or skip if done) one shard and return its metrics.

    `output` may be hf://USER/REPO: then the shard trains in `work_dir` (default
    $KIT_CACHE/runs/USER--REPO) and checkpoints, status and adapter go to the
    repo (kit/sync.py), written only while this session holds the shard's lease
    (kit/lease.py; `take_over` takes it from a session that still looks alive);
    `data_dir` may be hf://datasets/USER/REPO. `callbacks` are more TrainerCallbacks
    (see ShardRun for where they run)."""
    started = time.monotonic()
    main = is_main_process()  # under torchrun only rank 0 writes status, metrics, adapter and pushes (kit/launch.py)
    resolve_platform(cfg, verbose=main)  # fills the preset's `auto` knobs for this GPU and says why
    check_platform_packages(cfg)  # a missing bitsandbytes fails here, before any download or model load
    check_tracker_packages(cfg)  # and so does a missing tracker (train.report_to)
    print0(quantization_in_effect(cfg))
    for warning in config_warnings(cfg):
        print0(f"warning: {warning}")
    sync = open_shard_sync(output, shard, work_dir, private, dataset=str(data_dir))  # token checked before any work
    paths = ShardPaths(sync.local_output, shard)
    if main:  # rank 0 alone writes (tests/test_ddp.py checks the others write nothing)
        check_writable(paths)
    status = StatusFile(paths.status, shard)
    done = finished_metrics(cfg, sync, paths, status, output, main)
    if done is not None:
        return done

    data = load_shard_data(cfg, data_dir, shard)  # a bad shard index or split fails here, before any lease
    if main and sync.claim(take_over, cfg.train.heartbeat_minutes * 60):  # ShardLeaseError: another session has it
        status.update(state="running", max_steps=cfg.train.max_steps, error=None)  # what the heartbeat pushes
    try:
        names = tracker_names(output, shard)
        with tracker_runs(cfg, names, main):  # the shard's own W&B run, when asked for
            return _train_claimed(cfg, data, shard, sync, paths, status, started, main, callbacks, output, names)
    except BaseException as e:
        if main:  # the remote says why at once, and the lease is free for the next session
            sync.end_session(error=f"{type(e).__name__}: {e}")
        raise


def _train_claimed(cfg, data, shard, sync, paths, status, started, main, callbacks, output, names) -> dict:
    identity = run_identity(cfg, shard, data.sha256, world_size())
    resume = find_resume(cfg, paths, sync, main, identity)
    print0(
        f"shard {shard}: {len(data.dataset)} examples ({data.stats}); "
        + (f"resuming from {resume.name}" if resume else "starting")
    )
    run = ShardRun(cfg, paths, data, status, sync, started, main, identity, callbacks, names)
    if cfg.train.round_steps and world_size() > 1:
        raise KitError("train.round_steps runs one process per shard for now: set train.round_steps=0 under torchrun")
    if cfg.train.round_steps:  # fleet rounds: the shards meet through the run's remote every round_steps
        remote = sync.remote if isinstance(sync, ShardSync) else FolderRemote(output)
        trainer, result = run.train_rounds(resume, RoundStore(remote, paths.dir / ".rounds"))
    else:
        trainer, result = run.train(resume)
    sync.check_lease()  # taken over while training: raise, push nothing more
    if run.stopped_for_time:
        return run.stop_for_time(trainer, resume) if main else {}
    if not main:
        return {}
    return finish(cfg, paths, data, trainer, result, resume, run, sync, status, started)


def check_writable(paths: ShardPaths) -> None:
    """The run folder can be made and written, before any data is read or a model loaded."""
    for parent in (paths.root, *paths.root.parents):
        if parent.exists():
            if not parent.is_dir():
                raise KitError(
                    f"output {paths.root}: {parent} is a file, not a folder; give a folder (or "
                    "hf://USER/REPO) as the output",
                    param="output",
                )
            break
    try:
        paths.root.mkdir(parents=True, exist_ok=True)  # not the shard's own folder: its index is checked later
        probe = paths.root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise KitError(
            f"output {paths.root}: can't write there ({e.strerror}); give a folder you can write to", param="output"
        ) from None


def finished_metrics(cfg: RunConfig, sync, paths: ShardPaths, status: StatusFile, output, main: bool) -> dict | None:
    """The metrics of a shard already done (on the remote, or here: then pushed if not yet), else None.

    A shard done with other settings than `cfg` says how they differ: it is not trained again."""
    metrics, where = sync.remote_metrics(), f"on {output}"
    if metrics is None and status.read().get("state") == "done" and paths.metrics.is_file():
        metrics, where = read_json(paths.metrics), f"({paths.dir})"
        if main:
            sync.push_final(paths.dir, metrics)  # done here but not pushed yet
    if metrics is None:
        return None
    differences = finished_differences(metrics, cfg)
    if differences:
        print(
            f"shard {paths.shard}: already done {where}, but with other settings than these: "
            + "; ".join(differences)
            + ". Nothing is trained again; to train these settings, give a new output"
        )
    else:
        print(f"shard {paths.shard}: already done {where}; nothing to train")
    return metrics


@dataclass
class ShardData:
    """A shard's training examples, tokenized, with the eval records and the tokenizer that made them."""

    dataset: object  # datasets.Dataset: input_ids, labels, length
    stats: dict  # kit/data/tokenize.py's STAT_KEYS + cache_hit
    eval_records: list[dict]
    tokenizer: object
    sha256: str  # the shard file's, from the split's manifest: which data this is
    prompt_recipe: str  # how to prompt the adapter (kit/data/prompts.py), for the log and the model cards
    eval_tokens: int = 0  # what the final eval loss pass reads: the session budget reserves its time
    num_shards: int = 1  # the split's: the shards a round waits for (train.round_steps)


def load_shard_data(cfg: RunConfig, data_dir: str | Path, shard: int) -> ShardData:
    data_dir = fetch_split(data_dir, shard)  # a Hub split: only this shard + eval
    records = load_shard(data_dir, shard)  # checks the index and the checksum first
    eval_records = load_eval(data_dir)
    tokenizer = load_tokenizer(cfg)
    dataset, stats = encode_records(
        tokenizer,
        [to_messages(r) for r in records],
        max_length=cfg.data.max_length,
        turns=cfg.data.turns,
        cache_dir=cache_folder("tokenized"),
    )
    if len(dataset) == 0:
        raise DataError(
            f"shard {shard}: no example has an assistant token within data.max_length={cfg.data.max_length}",
            param="data.max_length",
        )
    eval_tokens = check_eval_split(cfg, tokenizer, eval_records, data_dir)  # before any step: eval runs after the last
    for warning in data_warnings(cfg, stats, shard):
        print0(f"warning: {warning}")
    recipe = prompt_recipe(tokenizer, [to_messages(r) for r in eval_records])
    if not recipe["matches"]:  # once per run: the adapter is prompted otherwise than the template's default
        print0(f"note: {recipe['recipe']}")
    manifest = read_manifest(data_dir)
    sha256 = manifest["files"][shard_file(shard)]["sha256"]
    return ShardData(
        dataset, stats, eval_records, tokenizer, sha256, recipe["recipe"], eval_tokens, int(manifest["num_shards"])
    )


PROBE_TOKENS = 8
"""New tokens the generation probe forces (a few: it runs once, before the first step)."""
CUT_WARN_SHARE = 0.05
"""Above this share of examples cut short by data.max_length, training warns (the count is in the metrics anyway)."""


def data_warnings(cfg: RunConfig, stats: dict, shard: int) -> list[str]:
    """What the tokenized shard's counts say a user should know before training on it."""
    kept, warnings = stats["kept"], []
    if stats["cut_truncated"] / kept > CUT_WARN_SHARE:
        warnings.append(
            f"{stats['cut_truncated']} of {kept} examples of shard {shard} are cut before the end "
            f"of their answer by data.max_length={cfg.data.max_length}: they teach answers that stop mid-way and "
            "never their end marker. Raise data.max_length (kit plan shows the memory per step)"
        )
    if stats["no_end_marker"]:
        warnings.append(
            f"{stats['no_end_marker']} of {kept} examples of shard {shard} train no end-of-turn marker: the chat "
            "template writes no text after those answers, so the model does not learn to stop and generates to "
            "max_new_tokens. Use a template that closes each assistant turn (e.g. with the eos token)"
        )
    if stats["reasoning_not_rendered"]:
        warnings.append(
            f"{stats['reasoning_not_rendered']} of {kept} examples of shard {shard} carry reasoning the chat "
            "template does not render, so it is not trained (R1-style templates drop every <think> block)"
        )
    if stats["split_fallback"]:
        warnings.append(
            f"{stats['split_fallback']} conversations of shard {shard} were trained one example per answer "
            "(data.turns=split) because the chat template rewrites their earlier answers (Qwen3 drops their "
            "reasoning); set data.turns=split to do so for every conversation"
        )
    return warnings


def check_eval_split(cfg: RunConfig, tokenizer, eval_records: list[dict], data_dir) -> int:
    """The eval split can be scored: not empty, and some example keeps an answer token within data.max_length.
    Returns the tokens the final eval loss pass reads (for the session budget's reserve)."""
    if not eval_records:
        raise DataError(
            f"{data_dir}: the eval split is empty, so the shard could not be scored after training; "
            "split again with an eval_fraction above 0 (e.g. 0.02)"
        )
    scored = eval_records[: cfg.eval.max_samples] if cfg.eval.max_samples else eval_records
    encoded, stats = encode_records(
        tokenizer, [to_messages(r) for r in scored], max_length=cfg.data.max_length, turns=cfg.data.turns
    )
    if stats["kept"] == 0:
        raise DataError(
            f"{data_dir}: no eval example keeps an answer token within data.max_length="
            f"{cfg.data.max_length}, so the shard could not be scored after training; raise "
            "data.max_length",
            param="data.max_length",
        )
    return int(sum(encoded["length"]))


def generation_probe(tokenizer, eval_records: list[dict], eval_cfg, tokens: int = PROBE_TOKENS):
    """A function of the model: seconds per generated token of one eval batch, as the final eval generates
    (the session budget's reserve for it, kit/budget.py). It forces `tokens` new tokens, prefill included."""
    conversations = [to_messages(r) for r in eval_records[: eval_cfg.batch_size]]

    def probe(model) -> float:
        begin = time.perf_counter()
        generate_answers(model, tokenizer, conversations, tokens, eval_cfg.batch_size, min_new_tokens=tokens)
        return (time.perf_counter() - begin) / tokens

    return probe


def find_resume(cfg: RunConfig, paths: ShardPaths, sync, main: bool, identity: dict) -> Path | None:
    """The newest intact checkpoint to resume from (pulled from the remote on a fresh machine), or None.

    A damaged newer checkpoint is set aside and the next older intact one is used, saying so; with none
    left the shard starts over, saying why. One trained on other data or settings is refused."""
    paths.dir.mkdir(parents=True, exist_ok=True)
    # Under torchrun, building the arguments joins the process group; the other ranks then wait
    # here until rank 0 has cleaned up and pulled, so every rank resumes from the same checkpoint.
    with training_arguments(cfg, paths.dir).main_process_first(desc="checkpoint cleanup and pull"):
        if main:
            for path in remove_incomplete_checkpoints(paths.dir):
                print(f"removed {path.name}: it was not completely written (interrupted save)")
            _, notes = newest_intact_checkpoint(paths.dir)  # sets damaged ones aside; pull and resume see the rest
            sync.pull_latest(paths.dir)  # a fresh machine continues from the remote's latest complete checkpoint
            resume = latest_complete_checkpoint(paths.dir)
            for note in notes:
                then = (
                    f"resuming from {resume.name} instead" if resume else "no intact checkpoint is left: starting over"
                )
                print(f"shard {paths.shard}: {note}; {then}", flush=True)
    resume = latest_complete_checkpoint(paths.dir)
    if resume is not None:
        check_resume(resume, identity)
    return resume


class ShardRun:
    """The Trainer of one shard, with its callbacks in the one order that works, and its OOM retries.

    Callback order (the Trainer calls them in list order at every event):
      1. SessionBudget: its on_save records stopped_for_time in status.json before the pusher
         snapshots that status for the remote.
      2. IdentityStamp: writes kit_identity.json into the save, so the marker hashes it and the push carries it.
      3. the caller's callbacks: they see each save before it is marked complete or pushed
         (tests stop a save there: tests/pause_runner.py).
      4. the sync's CheckpointPusher (a Hub or folder remote): marks the checkpoint complete itself
         (every file's size and sha256, kit/checkpoints.py) and hands it to the uploader thread.
      5. CheckpointMarker: marks a local checkpoint complete once the Trainer wrote all of it.
      6. StatusCallback, then ProgressBar (whose ETA knows where the budget stops training).
    """

    def __init__(
        self,
        cfg: RunConfig,
        paths: ShardPaths,
        data: ShardData,
        status: StatusFile,
        sync,
        started: float,
        main: bool,
        identity: dict,
        callbacks=(),
        trackers: TrackerNames | None = None,
    ):
        self.cfg, self.paths, self.data, self.status, self.sync = cfg, paths, data, status, sync
        self.started, self.main, self.extra = started, main, list(callbacks)
        self.identity, self.trackers = identity, trackers
        self.round_global: Path | None = None  # train.round_steps: the global this round starts from
        self.round_init: Path | None = None  # where round 1's first start saves the LoRA init (round 0's global)
        self.round_number: int | None = None  # the fleet round this train() call trains
        self.budget = None
        if cfg.train.session_hours > 0:
            e = cfg.eval
            generated = min(e.generate_samples, len(data.eval_records))
            reserve = FinalReserve(  # the final eval must fit too: else the run stops with a checkpoint instead
                data.eval_tokens,
                -(-generated // e.batch_size),
                e.max_new_tokens,
                probe=generation_probe(data.tokenizer, data.eval_records, e) if generated else None,
            )
            self.budget = SessionBudget(
                cfg.train.session_hours * 3600,
                elapsed_s=time.monotonic() - started,
                status=status if main else None,
                verbose=main,
                reserve=reserve,
            )
        self.sync_callbacks = sync.callbacks() if main else []  # one uploader thread, kept across OOM retries

    @property
    def stopped_for_time(self) -> bool:
        return self.budget is not None and self.budget.stopped

    def callbacks(self) -> list:
        budget = self.budget
        seconds_left = budget.seconds_left if budget else None
        rounds = []
        if self.cfg.train.round_steps:
            h = self.cfg.train.round_steps
            rounds = [
                RoundStart(
                    self.round_global,
                    reset_optimizer=self.cfg.train.round_reset_optimizer,
                    round_steps=h,
                    save_init=self.round_init,
                ),
                RoundBoundary(h, self.round_number),
            ]
        return [
            *([budget] if budget else []),
            *rounds,  # the boundary's save is a save like any: marked, stamped and pushed by what follows
            IdentityStamp(self.identity),
            *self.extra,
            *self.sync_callbacks,
            CheckpointMarker(),
            StatusCallback(self.status),
            ProgressBar(seconds_left=seconds_left),
        ]

    def make_trainer(self, cfg: RunConfig):
        """A fresh model each try: an OOM retry must not reuse a half-stepped one."""
        return build_trainer(
            cfg, self.data.dataset, self.data.tokenizer, self.paths.dir, self.callbacks(), trackers=self.trackers
        )

    def train(self, resume: Path | None):
        """(trainer, TrainOutput); status.json says running, then failed with the error if training raises."""
        if self.main:
            self.status.update(state="running", max_steps=self.cfg.train.max_steps, kit_version=kit_version())
        try:
            return train_with_oom_backoff(
                self.make_trainer, self.cfg, resume, lambda: latest_complete_checkpoint(self.paths.dir)
            )
        except BaseException as e:
            if self.main:
                self.status.update(state="failed", error=f"{type(e).__name__}: {e}"[:500])
            raise

    def train_rounds(self, resume: Path | None, store: RoundStore):
        """train.round_steps: train one round at a time, from the round's global (kit/rounds.py), push this
        shard's round adapter, wait for (or make) the next global; the last round returns like train().
        A shard back after the fleet moved on starts from the newest global (its skipped rounds are not
        trained; its learning-rate schedule and data continue from its own step). (None, None) when the
        session's time ran out waiting, before any training here."""
        t, h = self.cfg.train, self.cfg.train.round_steps
        last_round = t.max_steps // h
        trainer = result = None
        while True:
            step = checkpoint_step(resume) if resume else 0
            if step % h:  # mid-round (a session ended there): its own weights, its own round
                round_, self.round_global = checkpoint_round(resume, h), None
            else:
                done = checkpoint_round(resume, h) if resume else 0
                newest = store.newest_global()
                if done > newest:  # round `done` has no global yet: an earlier session ended while it waited
                    if self.main and self.paths.shard not in store.arrived(done):
                        # ... or before it pushed: the round's checkpoint holds the adapter the others wait for
                        self.push_round_adapter(store, done, resume)
                    if self.wait_for_round(store, done, step) is None:
                        return trainer, result
                    newest = max(store.newest_global(), done)
                if newest >= last_round:
                    raise KitError(
                        f"shard {self.paths.shard}: the fleet finished all {last_round} rounds while this shard was "
                        f"away (at step {step}): {round_folder(newest)}/global is the fleet's adapter; nothing is "
                        "left for this shard to train. Merge or use that global."
                    )
                if newest > done:
                    print0(
                        f"shard {self.paths.shard}: the fleet is at round {newest + 1}; skipping to it from "
                        f"round {done + 1} ({round_folder(newest)}/global), at this shard's step {step}"
                    )
                round_ = newest + 1
                self.round_global = store.pull_global(newest) if newest else None
            self.round_number = round_
            self.round_init = self.paths.dir / ".round-init" if step == 0 else None
            if self.main:
                self.status.update(round=round_, waiting_for=None)
            trainer, result = self.train(resume)
            end = trainer.state.global_step
            if self.main and self.round_init is not None and not store.has_global(0):
                store.push_global(0, self.round_init)  # every shard has this init (lora.init_seed): any pushes it
            ended = end % h == 0 and end > step
            if self.main and ended:
                self.push_round_adapter(store, round_, trainer.model)
            if ended and round_ >= last_round and self.main:
                # The last round: whoever arrives last makes the fleet's final global (or the merge notebook does).
                if set(range(self.data.num_shards)) <= set(store.arrived(round_)):
                    store.close(round_, Outer.of(t))
            if self.stopped_for_time or (ended and round_ >= last_round) or end >= t.max_steps:
                return trainer, result
            if self.wait_for_round(store, round_, end) is None:
                return trainer, result
            resume = latest_complete_checkpoint(self.paths.dir)

    def push_round_adapter(self, store: RoundStore, round_: int, source) -> None:
        """This shard's adapter after round `round_`, from the trained model, or from the checkpoint that ends
        the round (RoundBoundary saves one at every boundary): a session that died between that save and
        this push pushes the same adapter when it resumes, instead of waiting for a round that waits for it."""
        adapter = self.paths.dir / ".round-adapter"
        shutil.rmtree(adapter, ignore_errors=True)
        if isinstance(source, Path):
            adapter.mkdir(parents=True)
            for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
                shutil.copy2(source / name, adapter / name)
        else:
            source.save_pretrained(adapter)
        t = self.cfg.train
        store.push_shard(round_, self.paths.shard, adapter, t.round_steps, len(self.data.dataset), Outer.of(t))

    def wait_for_round(self, store: RoundStore, round_: int, step: int) -> Path | None:
        """Round `round_`'s global, or None when the session's budget ends first (then stopped for time)."""
        t = self.cfg.train
        what = f"round {round_}'s global adapter"
        if self.main:
            self.status.update(waiting_for=what)
        timeout = t.round_timeout_minutes * 60
        expected = store.live_shards(self.data.num_shards, self.paths.shard)
        give_up = max(self.budget.seconds_left(), 0.0) if self.budget else None
        got = store.wait_for_global(round_, expected, timeout, Outer.of(t), min(30.0, timeout / 10), give_up)
        if got is None:
            self.budget.stop_waiting(what, step)
        return got

    def stop_for_time(self, trainer, resume: Path | None = None) -> dict:
        """The budget stopped the run with a checkpoint: push it, record partial metrics, leave the shard not done.
        No trainer: the session ended waiting for a round (train_rounds) at `resume`, before any training."""
        cfg, shard = self.cfg, self.paths.shard
        step = trainer.state.global_step if trainer else checkpoint_step(resume)
        metrics = {
            "shard": shard,
            "partial": True,
            "steps": step,
            "max_steps": cfg.train.max_steps,
            "train_tokens": trainer.state.num_input_tokens_seen if trainer else None,
            "seconds": round(time.monotonic() - self.started, 1),
            "budget": self.budget.report(),
            "config": cfg.to_dict(),
        }
        # Not metrics.json: its presence means "done", locally and on the remote.
        write_json_atomic(self.paths.partial_metrics, metrics)
        self.status.update(state="stopped_for_time", step=step, budget=metrics["budget"])
        missing = self.sync.wait_for_uploads()  # the stop's checkpoint must land before the session ends
        self.sync.end_session()  # pushes the stopped_for_time status and frees the lease for the next session
        where = f"; NOT pushed: {', '.join(missing)}" if missing else ""
        print(
            f"shard {shard}: stopped for time at step {step}/{cfg.train.max_steps} "
            f"with {self.paths.checkpoint(step).name} saved{where}. "
            "Run the same command (or Run all) in a new session to continue.",
            flush=True,
        )
        return metrics


def finish(
    cfg: RunConfig,
    paths: ShardPaths,
    data: ShardData,
    trainer,
    result,
    resume,
    run: ShardRun,
    sync,
    status: StatusFile,
    started: float,
) -> dict:
    """Save the adapter, evaluate it, write metrics.json (the "done" marker) and push everything."""
    model = trainer.model
    adapter_dir = save_adapter(model, paths, cfg, n_examples=len(data.dataset), prompt_recipe=data.prompt_recipe)
    eval_began = time.monotonic()
    evaluation = evaluate_model(
        model, data.tokenizer, data.eval_records, cfg.eval, cfg.data.max_length, turns=cfg.data.turns
    )
    eval_s = round(time.monotonic() - eval_began, 1)  # beside budget.final_reserve: the estimate and the truth
    write_text_atomic(
        paths.eval_generations,  # pushed beside the adapter: never half a file
        "".join(json.dumps({"answer": a}, ensure_ascii=False) + "\n" for a in evaluation.pop("generations")),
    )
    metrics = {
        "shard": paths.shard,
        **evaluation,
        "train_loss": result.training_loss,
        "train_tokens": trainer.state.num_input_tokens_seen,
        "train_examples": len(data.dataset),
        "data_sha256": data.sha256,
        **{f"data_{k}": v for k, v in data.stats.items() if k != "kept"},
        "steps": trainer.state.global_step,
        "resumed_from_step": checkpoint_step(resume) if resume else None,
        "seconds": round(time.monotonic() - started, 1),
        "final_eval_s": eval_s,
        "kit_version": kit_version(),
        "adapter": str(adapter_dir),
        "budget": run.budget.report() if run.budget else None,
        "prompt_recipe": data.prompt_recipe,
        "config": cfg.to_dict(),
    }
    write_json_atomic(paths.metrics, metrics)
    status.update(state="done", step=trainer.state.global_step, eval_loss=metrics["eval_loss"])
    sync.push_final(paths.dir, metrics)  # waits for checkpoint uploads; UploadError names what did not land
    print(
        f"shard {paths.shard}: done in {metrics['seconds']} s; eval_loss {metrics['eval_loss']:.4f}, "
        f"json_valid_rate {metrics['json_valid_rate']:.2%}, adapter -> {adapter_dir}"
    )
    return metrics


def save_adapter(model, paths: ShardPaths, cfg: RunConfig, n_examples: int, prompt_recipe: str | None = None) -> Path:
    """The PEFT adapter plus kit_adapter.json, written whole (kit/files.py): never half an adapter."""
    with folder_written_whole(paths.adapter) as tmp:
        model.save_pretrained(tmp)
        # What the merge needs to weigh and check adapters, beside PEFT's own config.
        write_json_atomic(
            tmp / ADAPTER_INFO,
            {
                "shard": paths.shard,
                "train_examples": n_examples,
                "base_model": cfg.model.name_or_path,
                "hub_id": cfg.model.hub_id or None,  # the merge card's base_model when base_model is a local copy
                "revision": cfg.model.revision,
                "quantize": cfg.model.quantize,
                "prompt_recipe": prompt_recipe,  # the merge's model card repeats it
                "kit_version": kit_version(),
            },
        )
    return paths.adapter
