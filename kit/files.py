"""File and folder writes that are never seen half-done: write beside under a temp name, then rename.

    write_json_atomic(path, data)            # status, metrics, pointers
    tmp = staged_beside(dst, Path(src))      # a folder remote's commit: stage every file, then
    os.replace(tmp, dst)                     # publish them all under its lock (kit/remote.py)
    with folder_written_whole(final) as tmp: # an adapter, a pulled checkpoint, a tokenized cache
        model.save_pretrained(tmp)

A rename within one filesystem is atomic on POSIX: a reader (or a process killed
mid-write and restarted) sees the old file or folder or the new one, never half.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _temp_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")


def staged_beside(path: str | Path, data: bytes | Path) -> Path:
    """A hidden temp file beside `path` holding `data` (bytes, or a copy of that file); `os.replace` it onto
    `path` to publish it (a folder remote stages a whole commit first, then publishes it under its lock)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    if isinstance(data, Path):
        shutil.copyfile(data, tmp)
    else:
        tmp.write_bytes(data)
    return tmp


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    os.replace(staged_beside(path, data), path)  # atomic on POSIX: readers see the old file or the new one


@contextmanager
def folder_written_whole(final: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temp folder beside `final`; when the block ends without error it becomes `final`.

    replace=False keeps an existing `final` (another process wrote the same content first) and drops
    the new copy. On an error the temp folder is removed and `final` is untouched."""
    final = Path(final)
    tmp = _temp_beside(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if replace:
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if replace or not final.is_dir():
            raise
        # not replacing: the copy another process put there first is kept


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def json_text(data) -> str:
    """The one JSON layout kit writes (status, metrics, pointers): indented, UTF-8 kept, newline-terminated."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_json_atomic(path: str | Path, data) -> None:
    write_text_atomic(path, json_text(data))


def read_json(path: str | Path, default=None):
    path = Path(path)
    if not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
