"""Which local checkpoint is the latest *complete* one.

The Trainer writes `checkpoint-N/` piece by piece (adapter, optimizer, scheduler,
RNG state, trainer_state.json); a process killed in the middle leaves a folder
that looks like a checkpoint but can't be resumed from. `transformers`'
`get_last_checkpoint` only looks at the number, so kit marks a checkpoint
complete by writing `COMPLETE` into it once the Trainer's `on_save` event says
everything is on disk, and resumes only from a marked one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from kit.layout import COMPLETE_MARKER, checkpoint_step


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """checkpoint-N folders, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file()


def mark_complete(checkpoint: str | Path) -> None:
    marker = Path(checkpoint) / COMPLETE_MARKER
    marker.write_text("complete\n")


def latest_complete_checkpoint(run_dir: str | Path) -> Path | None:
    complete = [p for p in list_checkpoints(run_dir) if is_complete(p)]
    return complete[-1] if complete else None


def remove_incomplete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Delete unmarked checkpoints (left by a kill mid-save); they hold nothing a resume can use."""
    removed = []
    for path in list_checkpoints(run_dir):
        if not is_complete(path):
            shutil.rmtree(path)
            removed.append(path)
    return removed
