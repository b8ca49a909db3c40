"""Experiment trackers a shard reports to, named so every shard of a run lands in one project.

    train.report_to=trackio                      # or tensorboard, wandb, "trackio,tensorboard", none (default)
    train.trackio_space_id=me/my-run-dashboard   # every shard of the run logs to this one Space
    names = tracker_names("hf://me/run", 3)      # project "me/run", run "me/run/shard-03", a fixed run id
    TrainingArguments(**tracker_arguments(cfg, names), ...); callbacks += tracker_callbacks(cfg, shard_dir)
    with tracker_runs(cfg, names): trainer.train()   # opens and finishes the shard's W&B run

The Trainer's own integrations do the logging (transformers' TrackioCallback,
TensorBoardCallback, WandbCallback); this module only gives them names that
survive a resume on another account:
- trackio: `project` is the run repo, `name` is REPO/shard-II; trackio.init is
  called with resume="allow", so a resumed shard continues the run of that name.
- wandb: kit opens the shard's run itself (`tracker_runs`), with an id derived
  from the run repo and the shard and resume="allow", so a resumed shard
  continues its W&B run and each shard trained in one process gets its own.
- tensorboard: the event files go to `shard-II/tensorboard/` (transformers'
  default is a folder per start time and host, which splits a resumed shard
  in two); kit/sync.py pushes that folder, so the Hub's TensorBoard tab shows
  the whole shard and a resumed session appends its own event file beside the others.

Nothing secret reaches a tracker: the Trainer logs its arguments (which redact
any *_token field) and kit's config, which holds no token (kit/hf_token.py).

Tested by tests/test_trackers.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kit.config import report_targets
from kit.layout import TENSORBOARD, shard_name
from kit.remote import is_hub, parse_hub


@dataclass(frozen=True)
class TrackerNames:
    project: str  # the run: its repo id (USER/REPO) or its output folder's name
    run_name: str  # PROJECT/shard-II: the same on every account that trains this shard
    run_id: str  # a tracker-safe id, fixed per run and shard (W&B's resume key)


def tracker_names(output: str | Path, shard: int) -> TrackerNames:
    project = parse_hub(str(output))[1] if is_hub(output) else Path(str(output)).resolve().name
    run_name = f"{project}/{shard_name(shard)}"
    digest = hashlib.sha256(run_name.encode()).hexdigest()[:12]
    return TrackerNames(project, run_name, f"kit-{digest}")


def tracker_arguments(cfg, names: TrackerNames) -> dict:
    """The TrainingArguments fields for `cfg.train.report_to` (tensorboard is added by tracker_callbacks)."""
    targets = report_targets(cfg.train.report_to)
    integrations = [t for t in targets if t != "tensorboard"]
    args = {"report_to": integrations or "none", "run_name": names.run_name, "project": names.project}
    if "trackio" in targets:
        args["trackio_space_id"] = cfg.train.trackio_space_id or None
        # No static snapshot Space per shard at the end of each train(): with six shards that is six
        # more Spaces; the one live Space (trackio_space_id) already shows every shard of the run.
        args["trackio_static_space_id"] = False
    return args


def _active_wandb_run():
    wandb = sys.modules.get("wandb")  # never imported here: a run only exists if something imported wandb
    return getattr(wandb, "run", None) if wandb is not None else None


@contextmanager
def tracker_runs(cfg, names: TrackerNames, main: bool = True):
    """Around one shard's training: start its W&B run under the shard's fixed id, and finish it at the end.

    kit starts the run itself, and WandbCallback logs into it (it uses a run that is already open), because
    the callback cannot be given a run id: it takes it from WANDB_RUN_ID, which wandb reads once per process,
    and it never finishes its run. With the callback alone, every shard trained in one process (a script
    looping over `kit.train_shard`) would log into the first shard's run. A run the user opened before the
    shard is theirs: it is used and left open. WANDB_PROJECT / WANDB_RUN_ID, when set, win over kit's names.
    Finishing is a nicety: a failure to is printed, never raised over the shard's own result.
    """
    before = _active_wandb_run()
    ours = None
    if main and "wandb" in report_targets(cfg.train.report_to) and before is None:
        import wandb

        ours = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or re.sub(r"[^\w.-]", "-", names.project),
            id=os.environ.get("WANDB_RUN_ID") or names.run_id,
            name=names.run_name,
            resume="allow",  # a resumed shard, on any account, continues its run
        )
    failed = True
    try:
        yield
        failed = False
    finally:
        if ours is not None and _active_wandb_run() is ours:
            try:
                ours.finish(exit_code=1 if failed else 0)
            except Exception as e:  # noqa: BLE001 - the shard's outcome is already decided
                print(f"kit: could not finish the W&B run {ours.id}: {type(e).__name__}: {e}")


TRACKER_PACKAGES = {"trackio": ("trackio",), "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_tracker_packages(cfg) -> None:
    """Each tracker asked for is importable: a missing one fails before any download, with its install line."""
    import importlib.util

    from kit.errors import MissingPackageError

    for target in report_targets(cfg.train.report_to):
        packages = TRACKER_PACKAGES[target]
        if not any(importlib.util.find_spec(p) for p in packages):
            raise MissingPackageError(
                f"train.report_to={cfg.train.report_to} needs {' or '.join(packages)}: `pip install {packages[0]}` "
                f"(in a notebook: `%pip install {packages[0]}`), or drop {target} from train.report_to",
                param="train.report_to",
            )


def tensorboard_dir(shard_dir: str | Path) -> Path:
    return Path(shard_dir) / TENSORBOARD


def tracker_callbacks(cfg, shard_dir: str | Path) -> list:
    """TensorBoardCallback writing to shard-II/tensorboard/ (see the module docstring), when asked for."""
    if "tensorboard" not in report_targets(cfg.train.report_to):
        return []
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()  # raises, naming the package, when neither tensorboard nor tensorboardX is there
    callback.logging_dir = str(tensorboard_dir(shard_dir))  # read at on_train_begin; one folder for every session
    return [callback]
