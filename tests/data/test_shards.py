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


# ---- bad input and damaged state (kit/errors.py: one message each, nothing saved lost) ----


def test_splitting_into_a_folder_that_holds_another_split_is_refused_and_leaves_it_intact(tmp_path):
    out = tmp_path / "out"
    split_dataset(make_data(tmp_path / "a.jsonl", 40), out, 4, eval_fraction=0.1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ShardError, match=r"holds a split already \(4 shards of a.jsonl\).*set overwrite") as err:
        split_dataset(make_data(tmp_path / "b.jsonl", 30), out, 2, eval_fraction=0.1)
    assert err.value.params == ("out", "overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwriting_a_split_removes_the_old_splits_stale_shards(tmp_path):
    out = tmp_path / "out"
    split_dataset(make_data(tmp_path / "a.jsonl", 40), out, 4, eval_fraction=0.1)
    split_dataset(make_data(tmp_path / "b.jsonl", 30), out, 2, eval_fraction=0.1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["eval.jsonl", "manifest.json", "shard-00.jsonl", "shard-01.jsonl"]
    assert read_manifest(out)["source"] == "b.jsonl"


def test_an_eval_fraction_of_zero_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ShardError, match=r"eval_fraction=0 leaves no eval split.*such as 0.02") as err:
        split_dataset(make_data(tmp_path / "d.jsonl", 20), tmp_path / "out", 2, eval_fraction=0)
    assert err.value.params == ("eval_fraction",) and not (tmp_path / "out").exists()


def test_exact_duplicates_are_counted_and_never_straddle_the_eval_train_cut(tmp_path, capsys):
    rows = [{"prompt": f"q{i % 10}", "completion": "{}"} for i in range(60)]  # every record six times
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = split_dataset(src, tmp_path / "out", 3, eval_fraction=0.1)
    assert manifest["duplicates"] == 50 and "50 record(s) repeat an earlier one" in capsys.readouterr().out
    held_out = set(prompts(load_eval(tmp_path / "out")))
    trained = {p for i in range(3) for p in prompts(load_shard(tmp_path / "out", i))}
    assert held_out and not held_out & trained


def not_utf8(path):
    path.write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, r"no such file; give the path of a JSONL file"),
        (lambda p: p.mkdir() or p, r"is a folder: give the JSONL file itself"),
        (not_utf8, r"d.jsonl:2: not UTF-8 text \(byte 0xe9 at column 16\); save the file as UTF-8"),
    ],
    ids=["missing", "folder", "not-utf8"],
)
def test_an_input_that_is_not_a_readable_jsonl_file_is_named(tmp_path, make, message):
    with pytest.raises(RecordError, match=message):
        split_dataset(make(tmp_path / "d.jsonl"), tmp_path / "out", 1)


def test_a_damaged_manifest_is_named_with_the_fix(tmp_path):
    split_dataset(make_data(tmp_path / "d.jsonl", 20), tmp_path / "out", 2)
    (tmp_path / "out" / "manifest.json").write_text('{"format": "kit-shards/1", "fil')
    with pytest.raises(ShardError, match=r"manifest.json is damaged .*split again"):
        load_shard(tmp_path / "out", 0)
