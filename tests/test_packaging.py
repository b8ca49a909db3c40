"""What a Colab/Kaggle install pulls: never torch (the runtime's CUDA build stays), and the
presets ship inside the package.

    .venv/bin/python -m pytest tests/test_packaging.py -q
"""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def names(requirements):
    return {re.split(r"[<>=!~\[; ]", r.strip(), maxsplit=1)[0].lower() for r in requirements if r.strip()}


def test_neither_requirements_nor_the_package_ask_for_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert "torch" not in names(project["dependencies"])
    assert "torch" not in names(reqs)


def test_requirements_txt_covers_the_package_dependencies_plus_bitsandbytes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [line for line in (ROOT / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert names(reqs) == names(project["dependencies"]) | {"bitsandbytes"}


def test_presets_are_packaged_as_kit_configs():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["package-dir"]["kit.configs"] == "configs"
    assert "kit.configs" in tool["packages"]


def test_every_dependency_has_a_floor_and_requirements_txt_states_the_same_ones():
    from conftest import load_script

    pins = load_script("check_floors").floors()  # raises when a dependency has no >= floor
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert len(pins) == len(project["dependencies"]) + len(project["optional-dependencies"]["gpu"])
    reqs = {
        line.split(">=")[0]: line.split(">=")[1].split(",")[0]
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if ">=" in line and not line.startswith("#")
    }
    assert {p.split("==")[0]: p.split("==")[1] for p in pins} == reqs


def test_the_version_has_one_spelling_kit_dunder_version():
    import kit

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "kit.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", kit.__version__)
