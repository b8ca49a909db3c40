"""Write the install cell into every notebook from its one source, kit/bootstrap.py, and re-pair the .ipynb files.

    python scripts/sync_notebooks.py           # rewrite the cell in notebooks/*.py, then update each paired .ipynb
    python scripts/sync_notebooks.py --check   # change nothing; exit 1 naming every notebook whose cell drifted

The cell is the code below bootstrap.py's CELL line, then one call naming the notebook's
parameter that points at the run's data: `install_kit(kit_source, data)` (train_shard,
status), `eval_data` (merge), `push_to` (split). tests/test_bootstrap.py runs the check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOTSTRAP = ROOT / "kit" / "bootstrap.py"
NOTEBOOKS = ROOT / "notebooks"
TITLE = '# @title Install kit (skipped where it is installed) { display-mode: "form" }'
DATA_PARAMETER = {"train_shard": "data", "status": "data", "merge": "eval_data", "split": "push_to"}


def install_cell(data_parameter: str) -> str:
    """The install cell's source for a notebook whose data parameter is `data_parameter`."""
    text = BOOTSTRAP.read_text()
    marker = text.index("# ---- CELL:")
    code = text[text.index("\n", marker) + 1 :].strip()
    return (
        f"{TITLE}\n# Written from kit/bootstrap.py by scripts/sync_notebooks.py: edit that file, not this cell.\n"
        f"{code}\n\n\ninstall_kit(kit_source, {data_parameter})"
    )


def _is_install_cell(cell) -> bool:
    return cell.cell_type == "code" and cell.source.startswith("# @title Install kit")


def drifted() -> list[str]:
    """Names of the notebooks (.py or .ipynb) whose install cell is not the generated one."""
    import jupytext

    bad = []
    for name, parameter in DATA_PARAMETER.items():
        want = install_cell(parameter)
        for path in (NOTEBOOKS / f"{name}.py", NOTEBOOKS / f"{name}.ipynb"):
            cells = [c for c in jupytext.read(path).cells if _is_install_cell(c)]
            if len(cells) != 1 or cells[0].source.strip() != want:
                bad.append(path.name)
    return bad


def sync() -> None:
    import jupytext
    from jupytext.cli import jupytext as jupytext_cli

    for name, parameter in DATA_PARAMETER.items():
        source = NOTEBOOKS / f"{name}.py"
        nb = jupytext.read(source)
        cells = [c for c in nb.cells if _is_install_cell(c)]
        if len(cells) != 1:
            raise SystemExit(f"{source}: expected one cell starting '# @title Install kit', found {len(cells)}")
        cells[0].source = install_cell(parameter)
        jupytext.write(nb, source, fmt="py:percent")
        jupytext_cli(["--quiet", "--to", "ipynb", "--update", str(source)])
        print(f"{source.name}: install cell written; {source.with_suffix('.ipynb').name} updated")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report drift, change nothing")
    args = parser.parse_args()
    if args.check:
        bad = drifted()
        for name in bad:
            print(
                f"DRIFT DETECTED: the install cell of notebooks/{name} is not kit/bootstrap.py's; "
                "run `python scripts/sync_notebooks.py`",
                file=sys.stderr,
            )
        return 1 if bad else 0
    sync()
    return 0


if __name__ == "__main__":
    sys.exit(main())
