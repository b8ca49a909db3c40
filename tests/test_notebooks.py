"""The notebooks: each .py (jupytext percent, the source) matches its .ipynb, and all three
run headless under papermill with the tiny preset, as a Colab user's Run all would.

    .venv/bin/python -m pytest tests/test_notebooks.py -q    # ~1-2 min, no network
"""

import json
import os
import sys
from pathlib import Path

import jupytext
import papermill
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
TINY = "train.max_steps=4; train.save_steps=2; eval.generate_samples=2; eval.max_new_tokens=8"


def cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_the_pipeline_notebooks_exist():
    assert {p.stem for p in NOTEBOOKS} >= {"split", "train_shard", "merge"}


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_py_and_ipynb_hold_the_same_cells(source):
    paired = source.with_suffix(".ipynb")
    assert paired.is_file(), f"{paired.name} is missing: run `jupytext --to ipynb {source}`"
    drift = cells(jupytext.read(source)) != cells(jupytext.read(paired))
    assert not drift, (
        f"DRIFT DETECTED: {paired.name} differs from {source.name}; run `jupytext --to ipynb --update {source}`"
    )


@pytest.mark.parametrize("source", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_has_one_parameters_cell_with_colab_forms_and_no_token(source):
    nb = jupytext.read(source)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    lines = [line for line in tagged[0].source.splitlines() if "=" in line]
    assert lines and all("# @param" in line for line in lines)
    assert "token" not in tagged[0].source.lower(), "the HF token is never a notebook parameter"


def run(name, out_dir, **params):
    # The kernel must be this interpreter (where kit is installed), found first on PATH.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    out = out_dir / f"{name}.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / f"{name}.ipynb"), str(out), parameters=params, cwd=str(out_dir), progress_bar=False
    )
    return json.loads(out.read_text())


def test_split_train_and_merge_notebooks_run_headless(tmp_path, demo_data):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in demo_data.generate(40, seed=2)))
    run("split", tmp_path, input_path=str(data), num_shards=2, out=str(tmp_path / "shards"), eval_fraction=0.1)
    assert (tmp_path / "shards" / "manifest.json").is_file()

    for shard in (0, 1):
        run(
            "train_shard",
            tmp_path,
            shard_index=shard,
            preset="cpu-tiny",
            data=str(tmp_path / "shards"),
            output=str(tmp_path / "run"),
            overrides=TINY,
        )
        status = json.loads((tmp_path / "run" / f"shard-{shard:02d}" / "status.json").read_text())
        assert status["state"] == "done" and status["step"] == 4

    executed = run(
        "merge",
        tmp_path,
        run=str(tmp_path / "run"),
        out=str(tmp_path / "merged"),
        preset="cpu-tiny",
        overrides=TINY,
        eval_data=str(tmp_path / "shards"),
    )
    report = json.loads((tmp_path / "merged" / "merge_report.json").read_text())
    assert set(report["results"]) == {"base", "shard-00", "shard-01", "merged"}
    assert json.loads((tmp_path / "merged" / "adapter_config.json").read_text())["r"] == 16
    # papermill injected the parameters into the executed notebook; nothing else leaked in.
    assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])


def test_a_mistake_kit_can_name_fails_the_cell_with_its_message_shown_first(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError) as err:
        run(
            "train_shard",
            tmp_path,
            preset="no-such-preset",
            data=str(tmp_path / "shards"),
            output=str(tmp_path / "run"),
        )
    assert err.value.ename == "ConfigError", "the cell failed, so Run all and papermill stop there"
    nb = json.loads((tmp_path / "train_shard.ipynb").read_text())
    errors = [
        o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if o["output_type"] == "error"
    ]
    first = errors[0]["traceback"][0]
    assert first.startswith("kit: unknown preset 'no-such-preset': use one of"), first
    assert "set `preset` in the parameters cell" in first
