"""Read the records of an offline W&B run (its run-ID.wandb file), for tests/test_trackers.py.

    records = read_wandb_records(path)   # [wandb_internal_pb2.Record, ...] in the order they were written

wandb 0.31 writes the file from its Go core and ships no Python reader for it. The layout is LevelDB's
log format behind a 7-byte header (":W&B", a 2-byte magic, a version byte): 32 KiB blocks of chunks,
each a 4-byte checksum, a 2-byte little-endian length and a type (1 whole, 2 first, 3 middle, 4 last);
a block's tail shorter than a chunk header is padding. Each whole record is one protobuf `Record`.
"""

from __future__ import annotations

import struct
from pathlib import Path

HEADER = 7
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_wandb_records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # the block's padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if length == 0 and kind == 0:  # zeroed space at the end of a block
            pos += room
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def logged_steps(records, key: str) -> list[int]:
    """The train/global_step of every history row that logged `key`."""
    steps = []
    for record in records:
        if record.WhichOneof("record_type") != "history":
            continue
        row = {item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
        if key in row:
            steps.append(int(float(row["train/global_step"])))
    return steps
