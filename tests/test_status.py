"""Watching the fleet (kit/status.py, `python -m kit status`, notebooks/status.ipynb): six shards in
six states, written straight into a run folder and into a repo on the local test Hub.

    .venv/bin/python -m pytest -q tests/test_status.py    # ~30 s on 2 cores, no network (local test Hub)

Staleness is tested with an injected clock (`read_fleet(..., now=...)`), never by sleeping.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import papermill
import pytest

from kit.cli import main
from kit.remote import open_remote
from kit.status import format_fleet, live_view, loss_curves_png, read_fleet

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=timezone.utc)
CURVE = [[10, 2.0], [20, 1.5], [30, 1.2]]


def ago(now: datetime, minutes: float) -> str:
    return (now - timedelta(minutes=minutes)).isoformat(timespec="seconds")


def fleet_files(now: datetime, pointers: bool) -> dict[str, bytes]:
    """Shards 0-4 in five states (shard 5 never started). `pointers`: the remote layout (latest.json)
    rather than a local run folder's checkpoint-N/COMPLETE markers."""
    status = {
        0: {
            "state": "done",
            "step": 100,
            "max_steps": 100,
            "loss": 0.9,
            "tokens_seen": 50000,
            "platform": "kaggle",
            "updated_at": ago(now, 90),
            "loss_history": CURVE,
        },
        1: {
            "state": "running",
            "step": 50,
            "max_steps": 100,
            "loss": 1.2,
            "tokens_per_s": 800.0,
            "eta_s": 600,
            "tokens_seen": 20000,
            "platform": "colab",
            "updated_at": ago(now, 2),
            "loss_history": CURVE[:2],
        },
        2: {
            "state": "running",
            "step": 70,
            "max_steps": 100,
            "loss": 1.3,
            "tokens_per_s": 700.0,
            "eta_s": 300,
            "tokens_seen": 30000,
            "platform": "colab",
            "updated_at": ago(now, 40),
        },
        3: {
            "state": "stopped_for_time",
            "step": 45,
            "max_steps": 100,
            "tokens_seen": 10000,
            "platform": "kaggle",
            "updated_at": ago(now, 30),
        },
        4: {
            "state": "failed",
            "step": 3,
            "max_steps": 100,
            "error": "OutOfMemoryError: CUDA out of memory",
            "updated_at": ago(now, 5),
        },
    }
    files = {f"shard-{i:02d}/status.json": json.dumps(s).encode() for i, s in status.items()}
    files["shard-00/metrics.json"] = json.dumps({"eval_loss": 0.8, "train_tokens": 51000, "steps": 100}).encode()
    if pointers:
        files["shard-02/latest.json"] = json.dumps({"checkpoint": "checkpoint-60", "step": 60}).encode()
        files["shard-03/latest.json"] = json.dumps({"checkpoint": "checkpoint-40", "step": 40}).encode()
    else:
        files["shard-02/checkpoint-60/COMPLETE"] = b"complete\n"
        files["shard-02/checkpoint-70/adapter_model.safetensors"] = b"half"  # cut off mid-save: no COMPLETE
        files["shard-03/checkpoint-20/COMPLETE"] = b"complete\n"
        files["shard-03/checkpoint-40/COMPLETE"] = b"complete\n"
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def split_of_six(tmp_path) -> Path:
    return write_folder(tmp_path / "shards", {"manifest.json": json.dumps({"num_shards": 6, "files": {}}).encode()})


@pytest.fixture(params=["folder", "hub"])
def fleet_dest(request, tmp_path) -> str:
    if request.param == "folder":
        return str(write_folder(tmp_path / "run", fleet_files(NOW, pointers=False)))
    request.getfixturevalue("hub")
    dest = f"hf://kit-tester/fleet-{uuid.uuid4().hex[:8]}"
    remote = open_remote(dest)
    remote.ensure_exists()
    remote.commit(fleet_files(NOW, pointers=True), "six shards in six states")
    return dest


def test_every_shard_gets_its_state_progress_and_restart_action_from_a_folder_or_the_hub(fleet_dest, split_of_six):
    fleet = read_fleet(fleet_dest, data=split_of_six, now=NOW)
    rows = {r["shard"]: r for r in fleet["shards"]}
    assert {i: r["state"] for i, r in rows.items()} == {
        0: "done",
        1: "running",
        2: "stale",
        3: "stopped_for_time",
        4: "failed",
        5: "not_started",
    }
    assert (rows[1]["step"], rows[1]["max_steps"], rows[1]["loss"], rows[1]["tokens_per_s"]) == (50, 100, 1.2, 800.0)
    assert rows[1]["eta_s"] == 480, "the 600 s the shard reported, counted down over the 2 min since"
    assert rows[1]["platform"] == "colab" and rows[1]["action"] is None and rows[0]["action"] is None
    assert rows[0]["eval_loss"] == 0.8 and rows[0]["tokens_seen"] == 51000, "metrics.json wins for a done shard"
    assert rows[4]["error"].startswith("OutOfMemoryError")
    where = "on any account" if fleet_dest.startswith("hf://") else f"and output={fleet_dest}"
    assert rows[2]["action"] == f"open train_shard with shard_index=2 {where}; it resumes from step 60"
    assert rows[3]["action"] == f"open train_shard with shard_index=3 {where}; it resumes from step 40"
    assert rows[4]["action"] == f"open train_shard with shard_index=4 {where}; it starts from step 0"
    assert rows[5]["action"].endswith("it starts from step 0")

    table = format_fleet(fleet).splitlines()
    assert table[0].split() == ["shard", "state", "step", "loss", "tok/s", "ETA", "updated", "platform"]
    assert table[2].split() == ["01", "running", "50/100", "1.2000", "800", "8m00s", "2m00s", "ago", "colab"]
    assert table[3].split()[:3] == ["02", "stale", "70/100"]
    assert any(line.startswith("shard 2 (stale): open train_shard with shard_index=2") for line in table)


def test_a_running_shard_turns_stale_only_after_the_threshold_and_the_fleet_eta_waits_for_restarts(tmp_path):
    run = write_folder(
        tmp_path / "run",
        {k: v for k, v in fleet_files(NOW, pointers=False).items() if k.startswith(("shard-00", "shard-01"))},
    )
    at = lambda minutes, **kw: {
        r["shard"]: r for r in read_fleet(run, now=NOW + timedelta(minutes=minutes), **kw)["shards"]
    }  # noqa: E731
    assert at(12)[1]["state"] == "running"  # last update 14 min ago, threshold 15
    assert at(14)[1]["state"] == "stale"  # 16 min ago
    assert at(12, stale_after=10 * 60)[1]["state"] == "stale"
    assert at(12)[1]["eta_s"] == 0, "an ETA that has run out reads 0, never negative"

    fleet = read_fleet(run, now=NOW)
    assert fleet["totals"]["eta_s"] == 480 and fleet["totals"]["tokens_trained"] == 51000 + 20000
    fleet = read_fleet(run, now=NOW + timedelta(minutes=14))
    assert fleet["totals"]["eta_s"] is None and fleet["totals"]["needs_restart"] == 1
    assert "fleet ETA unknown until 1 shard(s) restart" in format_fleet(fleet)


def test_status_json_from_the_command_line_lists_every_shard_and_the_totals(tmp_path, split_of_six, capsys):
    run = write_folder(tmp_path / "run", fleet_files(datetime.now(timezone.utc), pointers=False))
    assert main(["status", str(run), "--data", str(split_of_six), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["shard"] for s in out["shards"]] == [0, 1, 2, 3, 4, 5]
    keys = {"shard", "state", "step", "max_steps", "loss", "tokens_per_s", "eta_s", "updated_at"}
    assert all(keys <= set(s) for s in out["shards"])
    assert [s["state"] for s in out["shards"]] == [
        "done",
        "running",
        "stale",
        "stopped_for_time",
        "failed",
        "not_started",
    ]
    assert out["totals"]["by_state"]["stale"] == 1 and out["totals"]["tokens_trained"] == 51000 + 20000 + 30000 + 10000

    # Headless text, and a longer --stale-after keeps shard 2 (40 min silent) running.
    assert main(["status", str(run), "--stale-after", "60"]) == 0
    text = capsys.readouterr().out
    assert "stale" not in text and re.search(r"^02\s+running", text, re.M)
    assert main(["status", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such folder" in err and len(err.strip().splitlines()) == 1


def test_the_loss_curves_of_every_shard_that_logged_one_make_a_png(tmp_path):
    run = write_folder(tmp_path / "run", fleet_files(NOW, pointers=False))
    png = loss_curves_png(read_fleet(run, now=NOW))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    empty = write_folder(tmp_path / "empty", {"shard-00/status.json": b'{"state": "running"}'})
    assert loss_curves_png(read_fleet(empty, now=NOW)) is None


def test_the_live_view_refreshes_its_widget_in_the_background_until_stopped(tmp_path, monkeypatch):
    run = write_folder(tmp_path / "run", fleet_files(datetime.now(timezone.utc), pointers=False))
    monkeypatch.setenv("KIT_PROGRESS", "widget")  # what an interactive Jupyter/Colab kernel gets
    view = live_view(run, every=0.05)
    try:
        assert "failed" in view.widget.value
        status = run / "shard-04" / "status.json"
        status.write_text(
            json.dumps(
                {
                    **json.loads(status.read_text()),
                    "state": "running",
                    "updated_at": datetime.now(timezone.utc).isoformat(),
                }
            )
        )
        deadline = time.monotonic() + 10
        while "failed" in view.widget.value and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "failed" not in view.widget.value, "the table picked up the change by itself"
    finally:
        view.stop()
    view._thread.join(timeout=5)
    assert not view._thread.is_alive()


def test_the_status_notebook_draws_the_table_and_the_loss_plot_once_under_papermill(tmp_path, split_of_six):
    run = write_folder(tmp_path / "run", fleet_files(datetime.now(timezone.utc), pointers=False))
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]  # the kernel is this venv
    out = tmp_path / "status.ipynb"
    started = time.monotonic()
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "status.ipynb"),
        str(out),
        cwd=str(tmp_path),
        progress_bar=False,
        parameters={"run": str(run), "data": str(split_of_six), "refresh_every_s": 1},
    )
    assert time.monotonic() - started < 120, "rendered once and returned"
    outputs = [
        o for c in json.loads(out.read_text())["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
    ]
    html = "".join("".join(o.get("data", {}).get("text/html", [])) for o in outputs)
    text = "".join("".join(o.get("data", {}).get("text/plain", [])) for o in outputs)
    assert "<table>" in html and "stale" in html and "shard_index=2" in html
    assert re.search(r"^02\s+stale", text, re.M), "a text table for readers without HTML"
    assert any("image/png" in o.get("data", {}) for o in outputs), "the loss curves were drawn"


def test_a_shard_trained_with_another_kit_is_named_under_the_table(tmp_path):
    files = {
        f"shard-{i:02d}/status.json": json.dumps(
            {"state": "running", "step": 5, "max_steps": 10, "updated_at": ago(NOW, 1), "kit_version": "0.1.0+aaaaaaaa"}
        ).encode()
        for i in range(3)
    }
    files["shard-02/status.json"] = json.dumps(
        {"state": "running", "step": 5, "max_steps": 10, "updated_at": ago(NOW, 1), "kit_version": "0.1.0+bbbbbbbb"}
    ).encode()
    # metrics.json (the final word on a done shard) overrides what status.json said.
    files["shard-01/metrics.json"] = json.dumps({"eval_loss": 1.0, "kit_version": "0.1.0+aaaaaaaa"}).encode()
    fleet = read_fleet(str(write_folder(tmp_path / "run", files)), now=NOW)
    assert [r["kit_version_differs"] for r in fleet["shards"]] == [False, False, True]
    table = format_fleet(fleet)
    assert "shard 2: trained with kit 0.1.0+bbbbbbbb, the others with 0.1.0+aaaaaaaa" in table
    same = read_fleet(
        str(write_folder(tmp_path / "same", {k: v for k, v in files.items() if "shard-02" not in k})), now=NOW
    )
    assert "trained with kit" not in format_fleet(same)


def test_a_shard_whose_status_json_is_truncated_shows_as_damaged_and_the_rest_still_show(
    tmp_path, split_of_six, capsys
):
    files = fleet_files(datetime.now(timezone.utc), pointers=True)
    files["shard-01/status.json"] = files["shard-01/status.json"][:25]  # an interrupted copy
    run = write_folder(tmp_path / "run", files)
    fleet = read_fleet(str(run), data=str(split_of_six))
    rows = {r["shard"]: r for r in fleet["shards"]}
    assert rows[1]["state"] == "damaged" and "shard-01/status.json is unreadable" in rows[1]["error"]
    assert rows[1]["action"].startswith("open train_shard with shard_index=1")
    assert [rows[s]["state"] for s in (0, 2, 3, 4, 5)] == ["done", "stale", "stopped_for_time", "failed", "not_started"]
    assert main(["status", str(run), "--data", str(split_of_six)]) == 0
    assert "shard 1 (damaged)" in capsys.readouterr().out


def test_a_damaged_split_manifest_is_one_message_from_the_command_line(tmp_path, split_of_six, capsys):
    import shutil

    run = write_folder(tmp_path / "run", fleet_files(datetime.now(timezone.utc), pointers=True))
    split = tmp_path / "split"
    shutil.copytree(split_of_six, split)
    (split / "manifest.json").write_text('{"num_sha')
    assert main(["status", str(run), "--data", str(split)]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ")
        and "manifest.json is damaged" in err
        and err.endswith("(on the command line: --data)\n")
    )
