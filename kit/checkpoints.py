"""Which local checkpoint is the latest *complete* and *intact* one, and what it was trained on.

The Trainer writes `checkpoint-N/` piece by piece (adapter, optimizer, scheduler,
RNG state, trainer_state.json); a process killed in the middle leaves a folder
that looks like a checkpoint but can't be resumed from. `transformers`'
`get_last_checkpoint` only looks at the number, so kit marks a checkpoint
complete by writing `COMPLETE` into it once the Trainer's `on_save` event says
everything is on disk, and resumes only from a marked one.

`COMPLETE` lists every file of the checkpoint with its size and sha256, so a
checkpoint damaged after it was marked (a file cut short by a full disk, an
optimizer.pt deleted by hand, a bad copy) is found before it is trusted:

    resume, notes = newest_intact_checkpoint(run_dir)   # damaged newer ones are set aside, with a note why

A resume from a damaged checkpoint would crash every time (a torn safetensors
file), or worse, go on silently with a fresh optimizer (a missing optimizer.pt)
and end with another adapter. `IDENTITY` in the checkpoint (kit/train.py writes
it) records what the run trained on, so a resume onto other data or settings is
refused instead of mixed (`identity_differences`).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from kit.files import sha256_file, write_json_atomic
from kit.layout import COMPLETE_MARKER, IDENTITY, checkpoint_step

MARKER_FORMAT = "kit-checkpoint/1"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """checkpoint-N folders, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / COMPLETE_MARKER).is_file()


def _listing(checkpoint: Path) -> dict[str, dict]:
    return {
        p.relative_to(checkpoint).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(checkpoint.rglob("*"))
        if p.is_file() and p.name != COMPLETE_MARKER
    }


def mark_complete(checkpoint: str | Path) -> None:
    """Write COMPLETE with every file's size and sha256; a checkpoint already marked is left as it is
    (the pusher and CheckpointMarker both mark each save: the second costs nothing)."""
    checkpoint = Path(checkpoint)
    if _marker(checkpoint) is not None:
        return
    write_json_atomic(checkpoint / COMPLETE_MARKER, {"format": MARKER_FORMAT, "files": _listing(checkpoint)})


def _marker(checkpoint: Path) -> dict | None:
    """COMPLETE's file list, or None when there is no marker, or an older kit's one without a list."""
    try:
        marker = json.loads((checkpoint / COMPLETE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT else None


def damage(checkpoint: Path) -> str | None:
    """Why a complete checkpoint can't be trusted (a file missing, cut short or changed), or None when intact.

    A marker from an older kit (no file list) is trusted as before."""
    if not is_complete(checkpoint):
        return f"it is not marked {COMPLETE_MARKER}"
    marker = _marker(checkpoint)
    if marker is None:
        text = (checkpoint / COMPLETE_MARKER).read_text(errors="replace").strip()
        return None if text == "complete" else f"its {COMPLETE_MARKER} marker is unreadable"
    for name, want in marker["files"].items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["size"]:
            return f"{name} has {path.stat().st_size} bytes, not the {want['size']} it was saved with"
        if sha256_file(path) != want["sha256"]:
            return f"{name} changed after it was saved (sha256 differs)"
    return None


def latest_complete_checkpoint(run_dir: str | Path) -> Path | None:
    complete = [p for p in list_checkpoints(run_dir) if is_complete(p)]
    return complete[-1] if complete else None


def set_aside(checkpoint: Path) -> Path:
    """Rename a damaged checkpoint out of the Trainer's way (it would save into the same name later); kept,
    not deleted: nothing saved is thrown away."""
    target = checkpoint.with_name(f".damaged-{checkpoint.name}-{int(time.time())}")
    checkpoint.rename(target)
    return target


def newest_intact_checkpoint(run_dir: str | Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint whose files match its marker, and one note per damaged newer one
    (each set aside). None when no checkpoint is left."""
    notes = []
    for checkpoint in reversed([p for p in list_checkpoints(run_dir) if is_complete(p)]):
        problem = damage(checkpoint)
        if problem is None:
            return checkpoint, notes
        aside = set_aside(checkpoint)
        notes.append(f"{checkpoint.name} is damaged ({problem}); set aside as {aside.name}")
    return None, notes


def remove_incomplete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Delete unmarked checkpoints (left by a kill mid-save); they hold nothing a resume can use."""
    removed = []
    for path in list_checkpoints(run_dir):
        if not is_complete(path):
            shutil.rmtree(path)
            removed.append(path)
    return removed


def read_identity(checkpoint: Path) -> dict | None:
    try:
        return json.loads((checkpoint / IDENTITY).read_text())
    except (OSError, ValueError):
        return None


def identity_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """`key: saved -> current` for every leaf that differs (keys missing on one side count)."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += identity_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
