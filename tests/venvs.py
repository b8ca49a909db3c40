"""Scratch virtualenvs for the tests that install kit the way a user's machine would.

    venv = Venv.create(tmp_path / "venv", "ipykernel", "papermill")   # torch 2.13.0 first, then these
    venv.pip("install", "dist/kit-0.1.0-py3-none-any.whl")
    venv.run("-m", "kit", "plan", "--preset", "cpu-tiny", cwd=empty_dir)

torch 2.13.0 goes in first and alone: it is the CPU build on these machines' disk, and
anything that depends on torch would otherwise pull a CUDA build of several GB. The
environment the commands run in has no PYTHONPATH and no virtualenv of the suite's on
PATH, so only what was installed here can be imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TORCH = "torch==2.13.0"


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without the suite's interpreter: no PYTHONPATH, no VIRTUAL_ENV, its bin/ off PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    suite_bin = os.path.dirname(sys.executable)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != suite_bin)
    env.update(extra)
    return env


class Venv:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.python = self.root / "bin" / "python"

    @classmethod
    def create(cls, root: Path, *packages: str) -> Venv:
        venv = cls(root)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        venv.pip("install", TORCH)
        if packages:
            venv.pip("install", *packages)
        return venv

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def pip(self, *args: str) -> str:
        proc = subprocess.run(
            [str(self.python), "-m", "pip", "-q", *args], capture_output=True, text=True, env=clean_env()
        )
        if proc.returncode != 0:
            raise AssertionError(f"pip {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc.stdout

    def run(self, *args: str, cwd: Path, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
        """`python ARGS` in this venv; returns the finished process (stdout and stderr captured)."""
        return subprocess.run(
            [str(self.python), *args], cwd=cwd, capture_output=True, text=True, env=env or clean_env(), timeout=timeout
        )

    def version(self, package: str) -> str | None:
        proc = self.run("-c", f"import importlib.metadata as m; print(m.version({package!r}))", cwd=self.root)
        return proc.stdout.strip() if proc.returncode == 0 else None
