"""`python -m kit` with a pause at one moment of training, for tests that SIGKILL it exactly there.

    python tests/pause_runner.py step:3 train --preset cpu-tiny ...     # after step 3 ends
    python tests/pause_runner.py save:4 train ...                       # inside checkpoint-4's save, before COMPLETE
    python tests/pause_runner.py pointer:4 train ...                    # checkpoint-4's files pushed, its pointer not

At the moment it writes SHARD_DIR/TEST_PAUSED and sleeps until killed. It goes
in through the two seams kit offers and reads nothing else: train_shard's
`callbacks` (which see a save before it is marked complete: kit/train.py's
ShardRun) and CheckpointUploader.files_landed (kit/sync.py). Production code
never reads a test variable. Used by tests/test_hub_resume.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from transformers import TrainerCallback

import kit.cli
import kit.sync
import kit.train

PAUSED = "TEST_PAUSED"


def pause_forever(spec: str, run_dir: Path) -> None:
    (Path(run_dir) / PAUSED).write_text(spec + "\n")
    while True:
        time.sleep(60)


class PauseAt(TrainerCallback):
    def __init__(self, spec: str):
        self.spec = spec

    def on_step_end(self, args, state, control, **kwargs):
        if self.spec == f"step:{state.global_step}":
            pause_forever(self.spec, args.output_dir)

    def on_save(self, args, state, control, **kwargs):
        if self.spec == f"save:{state.global_step}":
            pause_forever(self.spec, args.output_dir)


def install(spec: str) -> None:
    real_train_shard = kit.train.train_shard

    def train_shard(*args, callbacks=(), **kwargs):
        return real_train_shard(*args, callbacks=[PauseAt(spec), *callbacks], **kwargs)

    def files_landed(uploader, job):
        if spec == f"pointer:{job.step}":
            pause_forever(spec, job.staged.parent.parent)  # RUN/shard-II/.push/checkpoint-N -> the shard dir

    kit.train.train_shard = train_shard  # kit.cli imports it at call time
    kit.sync.CheckpointUploader.files_landed = files_landed


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(kit.cli.main(sys.argv[2:]))
