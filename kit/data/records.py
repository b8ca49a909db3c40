"""The record schema: what one line of a dataset may be, and errors that point at it.

A record is either a chat, `{"messages": [{"role": ..., "content": ...}, ...]}`,
or a single turn, `{"prompt": ..., "completion": ...}`. Other keys are kept but
ignored (the demo stores its constraints there). `read_jsonl` validates every
line and stops at the first bad one with `FILE:LINE: reason`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from kit.errors import RecordError

ROLES = ("system", "user", "assistant", "tool")


def record_problem(record: object) -> str | None:
    """Why `record` is not a valid record, or None when it is."""
    if not isinstance(record, dict):
        return f"a record must be a JSON object, got {type(record).__name__}"
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return '"messages" must be a non-empty list of {"role", "content"} objects'
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                return f'messages[{i}] must be an object with "role" and "content"'
            if m["role"] not in ROLES:
                return f"messages[{i}].role is {m['role']!r}; use one of {', '.join(ROLES)}"
            if not isinstance(m["content"], str):
                return f"messages[{i}].content must be a string"
        if not any(m["role"] == "assistant" for m in messages):
            return 'no "assistant" message: there is nothing to train on'
        return None
    if "prompt" in record or "completion" in record:
        for key in ("prompt", "completion"):
            if not isinstance(record.get(key), str):
                return f'"{key}" must be a string (a record is {{"prompt", "completion"}})'
        return None
    return 'a record needs "messages" (a chat) or "prompt" and "completion"'


def to_messages(record: dict) -> list[dict]:
    """The record as a chat: a prompt/completion pair becomes one user and one assistant turn."""
    if "messages" in record:
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["completion"]}]


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, str, dict]]:
    """Yield (line number, raw line, validated record) for each non-blank line."""
    path = Path(path)
    if path.is_dir():
        raise RecordError(f"{path} is a folder: give the JSONL file itself (one record per line)")
    if not path.is_file():
        raise RecordError(f"{path}: no such file; give the path of a JSONL file (one record per line)")
    with path.open("rb") as f:  # bytes, so a line that is not UTF-8 is named by its number
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(
                    f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                    "save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            problem = record_problem(record)
            if problem:
                raise RecordError(f"{path}:{lineno}: {problem}")
            yield lineno, line.rstrip("\r\n"), record


def read_jsonl(path: str | Path) -> list[dict]:
    return [record for _, _, record in iter_jsonl(path)]
