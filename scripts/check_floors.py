"""Install the oldest versions kit declares (the floors in pyproject.toml) into a scratch venv and run the suite there.

    python scripts/check_floors.py                      # venv in .floors-venv/, then pytest -q
    python scripts/check_floors.py -- tests/test_train.py -x   # other pytest arguments

A floor is only true if the suite passes on it: `transformers>=5.0` is a promise that
5.0.0 works. Every `name>=X` of the dependencies and of the gpu extra is installed as
`name==X`, with torch 2.13.0 (the CPU build on these machines) first; the dev tools
(pytest, jupytext, papermill, ...) come at their newest, since they are not what a runtime
has. The two tests that build venvs of their own (test_fresh_runtime, test_installed_wheel)
are left out by default: they install the newest versions, not the floors.
Prints the versions installed and exits with pytest's status. Needs the models of
`make models` in $KIT_CACHE (~/.cache/kit).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ARGS = ["-q", "--ignore=tests/test_fresh_runtime.py", "--ignore=tests/test_installed_wheel.py"]


def floors() -> list[str]:
    """`name==X` for every `name>=X` among the dependencies and the gpu extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = []
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]:
        match = re.match(r"^([A-Za-z0-9_.-]+).*?>=\s*([0-9][^,;\s]*)", requirement)
        if not match:
            raise SystemExit(f"pyproject.toml: {requirement!r} has no >= floor; every dependency needs one")
        pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


def dev_tools() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [r for r in project["optional-dependencies"]["dev"] if not r.lower().startswith("bitsandbytes")]


def main(argv: list[str]) -> int:
    args = argv[argv.index("--") + 1 :] if "--" in argv else DEFAULT_ARGS
    venv = ROOT / ".floors-venv"
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *floors(), *dev_tools()], check=True)
    subprocess.run([*pip, "--no-deps", "-e", str(ROOT)], check=True)
    check = subprocess.run([*pip[:3], "check"], capture_output=True, text=True)
    names = [re.split(r"[=<>]", p)[0] for p in floors()]
    shown = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True).stdout
    print(
        "floors installed:",
        ", ".join(
            line
            for line in shown.splitlines()
            if line.split("==")[0].lower().replace("_", "-") in {n.lower().replace("_", "-") for n in names}
        ),
        flush=True,
    )
    if check.returncode != 0:
        print(f"pip check: {check.stdout.strip()}", flush=True)
    return subprocess.run(
        [str(python), "-m", "pytest", *args], cwd=ROOT, env={**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"}
    ).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
