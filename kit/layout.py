"""Where every file of a split, a run and a merge lives: kit's on-disk contract, in one place.

    paths = ShardPaths("runs/x", 3)           # a run folder on this machine
    paths.status                              # runs/x/shard-03/status.json
    paths.checkpoint(40)                      # runs/x/shard-03/checkpoint-40
    remote = ShardPaths.in_repo(3)            # the same layout inside a run's repo (kit/remote.py paths)
    str(remote.pointer)                       # "shard-03/latest.json"
    cache_folder("runs", "me/run")            # $KIT_CACHE/runs/me--run

A split (`kit split --out DIR`, and its Hub dataset repo):

    manifest.json          counts and sha256 of every file below; written last, so it marks a whole split
    eval.jsonl             the eval split every shard and the merge score on
    shard-II.jsonl         one training shard
    kit/kit-*.whl          the kit that made the split (an uploaded split only; kit/bootstrap.py installs it)

A run (`kit train --output RUN`, and its Hub model repo), per shard:

    shard-II/checkpoint-N/        a Trainer checkpoint; COMPLETE (every file's size and sha256) once all is
                                  written, kit_identity.json (the data and settings it trained on)
    shard-II/latest.json          (a remote) the newest complete checkpoint pushed, with each file's sha256
    shard-II/status.json          state, step, loss, tokens/s, ETA: what `kit status` reads
    shard-II/lease.json           (a remote) the one session that may write the shard, renewed by its heartbeat
    shard-II/tensorboard/         event files, with train.report_to=tensorboard
    shard-II/metrics.json         written when the shard is done; its presence means "done"
    shard-II/metrics.partial.json a budget stop's partial metrics (the shard is not done)
    shard-II/eval_generations.jsonl, shard-II/loss.png
    shard-II/adapter/             the final PEFT adapter + kit_adapter.json (+ README.md on a remote)

A merge output holds the adapter (or a full model), merge_info.json and
merge_report.json; the report marks the folder as a merge (kit/merge.py refuses
to write over anything else).

Needs nothing of kit: every other module may import it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

# ---- a split ----
MANIFEST = "manifest.json"
EVAL_FILE = "eval.jsonl"
KIT_WHEEL_DIR = "kit"  # an uploaded split's folder for the wheel of the kit that made it


def shard_file(index: int) -> str:
    return f"{shard_name(index)}.jsonl"


# ---- a run ----
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # PEFT's
ADAPTER_INFO = "kit_adapter.json"  # kit's, beside PEFT's: shard, sample count, base model, quantization
MODEL_CARD = "README.md"
COMPLETE_MARKER = "COMPLETE"
IDENTITY = "kit_identity.json"  # in each checkpoint: what it was trained on (kit/identity.py)
STATUS = "status.json"
METRICS = "metrics.json"  # also the "done" marker, locally and on a remote
PARTIAL_METRICS = "metrics.partial.json"
POINTER = "latest.json"
LEASE = "lease.json"  # on a remote: which session writes this shard (kit/lease.py)
SESSION = ".lease-session"  # in a local work dir: the lease session of the last process that trained here
EVAL_GENERATIONS = "eval_generations.jsonl"
LOSS_PLOT = "loss.png"
TENSORBOARD = "tensorboard"  # event files, with train.report_to=tensorboard (kit/trackers.py)

# ---- a run's rounds (kit/round_store.py) ----
ROUNDS_DIR = "rounds"
GLOBAL_DIR = "global"  # rounds/RRR/global/: the adapter every shard starts round RRR from
ROUND_RECORD = "round.json"  # rounds/RRR/round.json: the outer step that made rounds/RRR/global/
ROUND_SHARD_INFO = "kit_round.json"  # rounds/RRR/shard-II/: the shard's steps and examples that round
OUTER_STATE = "outer_state.safetensors"  # rounds/RRR/: the outer optimizer's velocity after it
ROUND_MARK = "kit_round.json"  # checkpoint-N/: the fleet round it belongs to (a shard that skipped rounds)


def round_folder(round_: int) -> str:
    """rounds/007 for round 7 (a path inside a run's repo or folder)."""
    return f"{ROUNDS_DIR}/{round_:03d}"


# ---- a merge ----
MERGE_INFO = "merge_info.json"
MERGE_REPORT = "merge_report.json"

_SHARD = re.compile(r"shard-(\d+)")
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def shard_name(shard: int) -> str:
    return f"shard-{shard:02d}"


def shard_index(name: str) -> int | None:
    """3 for "shard-03"; None for anything else."""
    m = _SHARD.fullmatch(name)
    return int(m.group(1)) if m else None


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def checkpoint_step(path: str | PurePath) -> int | None:
    """40 for a folder named checkpoint-40 (a path or a name); None for anything else."""
    m = _CHECKPOINT.fullmatch(PurePath(path).name)
    return int(m.group(1)) if m else None


def parse_repo_path(path: str) -> tuple[int | None, int | None, str]:
    """A file of a run's listing -> (shard, checkpoint step, rest): "shard-03/checkpoint-40/COMPLETE" ->
    (3, 40, "COMPLETE"); "shard-03/status.json" -> (3, None, "status.json"); other files -> (None, None, path)."""
    parts = path.split("/")
    shard = shard_index(parts[0]) if len(parts) > 1 else None
    if shard is None:
        return None, None, path
    step = checkpoint_step(parts[1]) if len(parts) > 2 else None
    return shard, step, "/".join(parts[2:] if step is not None else parts[1:])


def shard_dirs(run: str | Path) -> list[Path]:
    """RUN/shard-II folders, in shard order."""
    run = Path(run)
    found = [p for p in run.iterdir() if p.is_dir() and shard_index(p.name) is not None] if run.is_dir() else []
    return sorted(found, key=lambda p: shard_index(p.name))


@dataclass(frozen=True)
class ShardPaths:
    """One shard's files under a run root: a local Path, or (in_repo) the paths inside a run's repo."""

    root: PurePath
    shard: int

    def __init__(self, root: str | PurePath, shard: int):
        object.__setattr__(self, "root", root if isinstance(root, PurePath) else Path(root))
        object.__setattr__(self, "shard", shard)

    @classmethod
    def in_repo(cls, shard: int) -> ShardPaths:
        """Paths relative to a run repo's root (str() gives what kit/remote.py takes)."""
        return cls(PurePosixPath(), shard)

    @property
    def name(self) -> str:
        return shard_name(self.shard)

    @property
    def dir(self):
        return self.root / self.name

    def checkpoint(self, step: int):
        return self.dir / checkpoint_name(step)

    @property
    def adapter(self):
        return self.dir / ADAPTER_DIR

    @property
    def status(self):
        return self.dir / STATUS

    @property
    def metrics(self):
        return self.dir / METRICS

    @property
    def partial_metrics(self):
        return self.dir / PARTIAL_METRICS

    @property
    def pointer(self):
        return self.dir / POINTER

    @property
    def lease(self):
        return self.dir / LEASE

    @property
    def session(self):
        return self.dir / SESSION

    @property
    def eval_generations(self):
        return self.dir / EVAL_GENERATIONS

    @property
    def loss_plot(self):
        return self.dir / LOSS_PLOT

    @property
    def push_staging(self):
        """Where a checkpoint is linked aside for its upload (kit/sync.py)."""
        return self.dir / ".push"

    def pull_staging(self, checkpoint: str):
        """Where a remote checkpoint is downloaded before it is renamed into place (kit/sync.py)."""
        return self.dir / f".pull-{checkpoint}"


def adapter_label(adapter_dir: Path) -> str:
    """`shard-03` for RUN/shard-03/adapter, the folder name for a bare adapter folder."""
    return adapter_dir.parent.name if adapter_dir.name == ADAPTER_DIR else adapter_dir.name


# ---- this machine's cache ----


def kit_cache_dir() -> Path:
    """$KIT_CACHE, or ~/.cache/kit: prepared demo models, tokenized data, Hub runs' work dirs live here."""
    return Path(os.environ.get("KIT_CACHE") or Path.home() / ".cache" / "kit")


def cache_folder(kind: str, *names: str) -> Path:
    """$KIT_CACHE/KIND/USER--REPO[--FOLDER]: one flat folder per remote thing, e.g. ("runs", "me/run")."""
    flat = "--".join(part for name in names for part in str(name).strip("/").split("/") if part)
    return kit_cache_dir() / kind / flat if flat else kit_cache_dir() / kind
