"""Split a dataset into one shared eval split and N balanced shards; load one shard back.

    python -m kit split data.jsonl --shards 6 --eval-fraction 0.02 --out shards/

Layout of the output folder:

    eval.jsonl  shard-00.jsonl ... shard-05.jsonl  manifest.json
    kit/kit-VERSION-py3-none-any.whl   (uploaded splits only: the kit every shard installs)

The eval split is held out first, so every shard and every merge candidate is
scored on the same examples. The rest is shuffled with the seed and cut into
contiguous runs whose sizes differ by at most one. The manifest records the
counts and sha256 of every file; `load_shard` checks them, so a shard that was
truncated by an interrupted upload is refused instead of trained on.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from kit.data.records import iter_jsonl, read_jsonl
from kit.errors import ShardError
from kit.files import sha256_file, write_text_atomic
from kit.layout import EVAL_FILE, KIT_WHEEL_DIR, MANIFEST, cache_folder, shard_file, shard_index


def split_dataset(
    input_path: str | Path,
    out_dir: str | Path,
    num_shards: int,
    eval_fraction: float = 0.02,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write eval.jsonl, shard-II.jsonl and manifest.json into out_dir; return the manifest.

    Exact duplicate records are counted (manifest "duplicates") and every copy of one lands on the
    same side of the eval/train cut, so the eval split never scores an example a shard trained on.
    An out_dir that holds another split is refused unless `overwrite`; then the old split's files
    are removed first, so no stale shard of it is left beside the new ones."""
    if num_shards < 1:
        raise ShardError(f"num_shards={num_shards}: need at least 1 shard", param="num_shards")
    if eval_fraction == 0:
        raise ShardError(
            "eval_fraction=0 leaves no eval split, and every shard's eval loss and JSON validity rate and the "
            "merge's choice are measured on it: give a share such as 0.02",
            param="eval_fraction",
        )
    if not 0 < eval_fraction < 1:
        raise ShardError(f"eval_fraction={eval_fraction}: must be between 0 and 1, e.g. 0.02", param="eval_fraction")
    input_path = Path(input_path)
    out_dir = Path(out_dir)
    check_split_destination(out_dir, overwrite)  # before reading: a refusal costs nothing
    lines, groups = [], {}
    for _, line, record in iter_jsonl(input_path):  # validates every record first
        groups.setdefault(json.dumps(record, sort_keys=True, ensure_ascii=False), []).append(len(lines))
        lines.append(line)
    # Shuffle whole groups of identical records: without duplicates this is a shuffle of the lines.
    copies = list(groups.values())
    order = list(range(len(copies)))
    random.Random(seed).shuffle(order)
    wanted_eval = max(1, round(len(lines) * eval_fraction))
    eval_lines, train_lines = [], []
    for g in order:
        (eval_lines if len(eval_lines) < wanted_eval else train_lines).extend(copies[g])
    if len(train_lines) < num_shards:
        raise ShardError(f"{input_path}: {len(train_lines)} training records can't fill {num_shards} shards")
    parts = {EVAL_FILE: eval_lines}
    base, extra = divmod(len(train_lines), num_shards)
    start = 0
    for i in range(num_shards):
        size = base + (1 if i < extra else 0)
        parts[shard_file(i)] = train_lines[start : start + size]
        start += size
    remove_split(out_dir)  # the old split, if overwrite let one through
    files = {}
    try:
        for name, indices in parts.items():
            path = out_dir / name
            write_text_atomic(path, "".join(lines[j] + "\n" for j in indices))
            files[name] = {"count": len(indices), "sha256": sha256_file(path)}
    except OSError as e:
        raise ShardError(f"out={str(out_dir)!r}: can't write the split there ({e.strerror})", param="out") from e
    duplicates = len(lines) - len(groups)
    if duplicates:
        print(
            f"split: {duplicates} record(s) repeat an earlier one exactly; each repeated record lies wholly in "
            "the eval split or wholly in the training shards",
            flush=True,
        )
    manifest = {
        "format": "kit-shards/1",
        "source": input_path.name,
        "source_sha256": sha256_file(input_path),
        "records": len(lines),
        "duplicates": duplicates,
        "num_shards": num_shards,
        "eval_fraction": eval_fraction,
        "seed": seed,
        "files": files,
    }
    # The manifest is written last: a folder without one is an unfinished split.
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_split_destination(out_dir: Path, overwrite: bool) -> None:
    """Refuse a file, and a folder that holds another split (its manifest) unless `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ShardError(f"out={str(out_dir)!r} is a file: give a folder for the split", param="out")
    old = out_dir / MANIFEST
    if old.is_file() and not overwrite:
        try:
            what = json.loads(old.read_text())
            what = f"{what['num_shards']} shards of {what['source']}"
        except (ValueError, KeyError, TypeError):
            what = "an unreadable manifest"
        raise ShardError(
            f"out={str(out_dir)!r} holds a split already ({what}): choose another folder, or set overwrite to "
            "replace it (its files are removed first)",
            param=("out", "overwrite"),
        )


def remove_split(out_dir: Path) -> None:
    """Delete a split's manifest, eval file and shard files (whatever its manifest lists, and shard-II.jsonl)."""
    if not out_dir.is_dir():
        return
    names = {MANIFEST, EVAL_FILE}
    try:
        names |= set(json.loads((out_dir / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    stale = [p for p in out_dir.glob("*.jsonl") if shard_index(p.stem) is not None]
    for path in [out_dir / n for n in names] + stale:
        path.unlink(missing_ok=True)


def read_manifest(data_dir: str | Path) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise ShardError(
            f"{data_dir}: no {MANIFEST}; create the shards with `python -m kit split INPUT --out {data_dir}`"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise ShardError(f"{path} is damaged ({e}); split again, or copy the split folder again") from None


def load_split(data_dir: str | Path, name: str) -> list[dict]:
    """Records of one file of a split folder, checked against the manifest."""
    manifest = read_manifest(data_dir)
    entry = manifest["files"].get(name)
    path = Path(data_dir) / name
    if entry is None or not path.is_file():
        raise ShardError(f"{path}: missing from the split; run `python -m kit split` again")
    if sha256_file(path) != entry["sha256"]:
        raise ShardError(f"{path}: checksum differs from {MANIFEST} (partial copy?); copy or split it again")
    return read_jsonl(path)


def load_shard(data_dir: str | Path, index: int) -> list[dict]:
    manifest = read_manifest(data_dir)
    n = manifest["num_shards"]
    if not 0 <= index < n:
        raise ShardError(f"shard index {index} is out of range: {data_dir} has shards 0..{n - 1}")
    return load_split(data_dir, shard_file(index))


def load_eval(data_dir: str | Path) -> list[dict]:
    return load_split(data_dir, EVAL_FILE)


def push_split(out_dir: str | Path, push_to: str, private: bool = True) -> dict:
    """Upload a split folder and the kit that made it to `push_to` (hf://datasets/USER/REPO or a folder).

    The wheel (kit/wheel.py) lands as `kit/kit-VERSION-py3-none-any.whl` and the
    uploaded manifest names it under "kit", so a shard notebook on a fresh runtime
    installs exactly this code (kit/bootstrap.py). On the Hub it is one commit (all or
    nothing); in a folder the manifest is copied last, so a reader never sees a
    manifest whose files are not there yet. Returns the uploaded manifest."""
    import tempfile

    from kit.remote import open_remote_for_push
    from kit.wheel import build_wheel, wheel_version

    remote = open_remote_for_push(push_to, f"push_to={push_to!r}")
    remote.ensure_exists(private=private)
    manifest = read_manifest(out_dir)
    with tempfile.TemporaryDirectory(prefix="kit-wheel-") as tmp:
        wheel = build_wheel(tmp)
        manifest["kit"] = {"version": wheel_version(wheel), "wheel": f"{KIT_WHEEL_DIR}/{wheel.name}"}
        files: dict[str, Path | bytes] = {name: Path(out_dir) / name for name in manifest["files"]}
        files[manifest["kit"]["wheel"]] = wheel
        files[MANIFEST] = (json.dumps(manifest, indent=2) + "\n").encode()  # last: the marker of a whole split
        remote.commit(files, f"kit split: {manifest['num_shards']} shards, kit {manifest['kit']['version']}")
    return manifest


def fetch_split(source: str | Path, index: int, cache_dir: str | Path | None = None) -> Path:
    """A local folder that holds shard `index`: `source` itself, or a download of only
    the manifest, the eval split and that one shard from a Hub dataset (load_shard
    then checks their checksums)."""
    from kit.remote import is_hub, open_remote, parse_hub

    if not is_hub(source):
        return Path(source)
    local = cache_folder("data", parse_hub(str(source))[1])  # $KIT_CACHE/data/USER--REPO
    if cache_dir is not None:
        local = Path(cache_dir) / local.name
    return open_remote(source).download([MANIFEST, EVAL_FILE, shard_file(index)], local)
