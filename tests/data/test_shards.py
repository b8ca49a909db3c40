"""Split: balanced, deterministic, a manifest with checksums, and clear errors.

.venv/bin/python -m pytest tests/data/test_shards.py -q
"""

import hashlib
import json

import pytest

from kit.data.shards import load_eval, load_shard, read_manifest, split_dataset
from kit.errors import RecordError, ShardError


def make_data(path, n):
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f'{{"a": {i}}}'}) + "\n" for i in range(n)))
    return path


def prompts(records):
    return [r["prompt"] for r in records]


@pytest.mark.parametrize("n, shards", [(103, 6), (100, 4), (7, 3)])
def test_shard_sizes_differ_by_at_most_one_and_cover_every_record(tmp_path, n, shards):
    src = make_data(tmp_path / "d.jsonl", n)
    manifest = split_dataset(src, tmp_path / "out", shards, eval_fraction=0.05, seed=1)
    sizes = [manifest["files"][f"shard-{i:02d}.jsonl"]["count"] for i in range(shards)]
    assert max(sizes) - min(sizes) <= 1
    everything = prompts(load_eval(tmp_path / "out"))
    for i in range(shards):
        everything += prompts(load_shard(tmp_path / "out", i))
    assert sorted(everything) == sorted(f"q{i}" for i in range(n))


def test_the_same_seed_gives_the_same_shards_and_another_seed_does_not(tmp_path):
    src = make_data(tmp_path / "d.jsonl", 50)
    a = split_dataset(src, tmp_path / "a", 3, seed=7)
    b = split_dataset(src, tmp_path / "b", 3, seed=7)
    c = split_dataset(src, tmp_path / "c", 3, seed=8)
    assert a["files"] == b["files"]
    assert a["files"] != c["files"]


def test_the_eval_split_is_held_out_first_and_shared(tmp_path):
    src = make_data(tmp_path / "d.jsonl", 200)
    split_dataset(src, tmp_path / "out", 4, eval_fraction=0.1, seed=0)
    held = set(prompts(load_eval(tmp_path / "out")))
    assert len(held) == 20
    for i in range(4):
        assert held.isdisjoint(prompts(load_shard(tmp_path / "out", i)))


def test_the_manifest_records_counts_and_sha256_of_every_file(tmp_path):
    src = make_data(tmp_path / "d.jsonl", 30)
    split_dataset(src, tmp_path / "out", 2, eval_fraction=0.1)
    manifest = read_manifest(tmp_path / "out")
    assert set(manifest["files"]) == {"eval.jsonl", "shard-00.jsonl", "shard-01.jsonl"}
    for name, entry in manifest["files"].items():
        data = (tmp_path / "out" / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["count"] == len(data.splitlines())
    assert manifest["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def test_a_bad_record_stops_the_split_before_anything_is_written(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(RecordError, match=r"d.jsonl:2: "):
        split_dataset(src, tmp_path / "out", 1)
    assert not (tmp_path / "out").exists()


def test_a_shard_index_out_of_range_names_the_valid_range(tmp_path):
    split_dataset(make_data(tmp_path / "d.jsonl", 20), tmp_path / "out", 3)
    with pytest.raises(ShardError, match=r"shard index 3 is out of range: .* has shards 0..2"):
        load_shard(tmp_path / "out", 3)


def test_a_shard_whose_checksum_changed_is_refused(tmp_path):
    split_dataset(make_data(tmp_path / "d.jsonl", 20), tmp_path / "out", 2)
    path = tmp_path / "out" / "shard-01.jsonl"
    path.write_text(path.read_text()[:-10])  # a truncated copy
    with pytest.raises(ShardError, match="checksum differs"):
        load_shard(tmp_path / "out", 1)


def test_a_folder_without_manifest_says_how_to_make_one(tmp_path):
    with pytest.raises(ShardError, match="python -m kit split"):
        load_shard(tmp_path, 0)
