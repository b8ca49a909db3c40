"""What a Colab/Kaggle install pulls: never torch (the runtime's CUDA build stays), and the
presets ship inside the package.

    .venv/bin/python -m pytest tests/test_packaging.py -q
"""

import re
import tomllib
from pathlib import Path

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
