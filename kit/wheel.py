"""kit's own wheel, built from the kit that is running, and the version that names that code.

    kit_version()                 # "0.1.0+5c1e9a2f": the release, then a hash of every file kit is made of
    path = build_wheel("dist/")   # dist/kit-0.1.0+5c1e9a2f-py3-none-any.whl
    python -m kit split data.jsonl --shards 6 --out shards/ --push-to hf://datasets/me/data   # uploads it too

Why a wheel of our own making: `kit split --push-to` puts the kit that made a run into
the run's data repo (`kit/<wheel>`), so every shard notebook installs exactly that code
(kit/bootstrap.py), on any account. The running kit may have come from a checkout
(editable) or from a wheel (no source tree, no setuptools to hand), so the wheel is
written from the importable package itself: its files, plus the installed
distribution's METADATA (dependencies and extras) with the version replaced.

The version's local part is a hash of the package files, so two shards that report the
same version ran the same code, even where a checkout was edited without a release,
and the same code always gives byte-identical wheels (fixed timestamps and order):
pushing a split again changes nothing on the Hub.

Tested by tests/test_wheel.py (`.venv/bin/python -m pytest -q tests/test_wheel.py`).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

import kit
from kit.config import presets_dir
from kit.errors import WheelError

DIST = "kit"
WHEEL_TAG = "py3-none-any"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip can hold: the same bytes for the same files


def package_files() -> dict[str, bytes]:
    """{path inside the wheel: content} for every file of the kit package, presets as kit/configs/*.yaml."""
    root = Path(kit.__file__).resolve().parent
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if (
            path.is_file()
            and "__pycache__" not in rel.parts
            and path.suffix != ".pyc"
            and not path.name.startswith(".")
        ):
            files[f"kit/{rel.as_posix()}"] = path.read_bytes()
    # A checkout keeps the presets in configs/ beside kit/ (packaged as kit.configs); an installed wheel inside kit/.
    for preset in sorted(presets_dir().glob("*.yaml")):
        files.setdefault(f"kit/configs/{preset.name}", preset.read_bytes())
    return files


def release() -> str:
    """The release part of the version (kit.__version__, which pyproject.toml reads too)."""
    return kit.__version__.split("+")[0]


def version_of(files: dict[str, bytes]) -> str:
    """RELEASE+HASH of these files: any change to a name or a byte changes the hash."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return f"{release()}+{digest.hexdigest()[:8]}"


@functools.lru_cache(maxsize=1)
def kit_version() -> str:
    """The running kit's version: the hash covers every file its wheel holds, so equal versions mean equal code."""
    return version_of(package_files())


def wheel_name(version: str | None = None) -> str:
    return f"{DIST}-{version or kit_version()}-{WHEEL_TAG}.whl"


def wheel_version(wheel: str | Path) -> str:
    """The version a wheel's file name states: kit-VERSION-py3-none-any.whl -> VERSION."""
    return Path(wheel).name.split("-")[1]


def _installed_metadata() -> tuple[str, str | None]:
    """(METADATA, entry_points.txt) of the installed distribution: its dependencies, extras and `kit` command."""
    try:
        dist = importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    # A checkout's kit.egg-info (found first when the checkout is the working folder) calls it PKG-INFO.
    text = dist and (dist.read_text("METADATA") or dist.read_text("PKG-INFO"))
    if not text:
        raise WheelError(
            "kit runs from a folder but is not installed, so its dependencies are unknown: "
            "install it first (`pip install -e .` in the checkout), then push the split again"
        )
    return text, dist.read_text("entry_points.txt")


def _with_version(metadata: str, version: str) -> str:
    head, sep, body = metadata.partition("\n\n")
    lines = [f"Version: {version}" if line.startswith("Version:") else line for line in head.splitlines()]
    return "\n".join(lines) + "\n" + (f"\n{body}" if sep else "")


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(out_dir: str | Path) -> Path:
    """Write kit's wheel into out_dir and return its path (same code -> same bytes).

    The version is computed from the very files packed, so name, METADATA and contents always agree."""
    files = package_files()
    version = version_of(files)
    info = f"{DIST}-{version}.dist-info"
    metadata, entry_points = _installed_metadata()
    files[f"{info}/METADATA"] = _with_version(metadata, version).encode()
    files[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: kit {version}\nRoot-Is-Purelib: true\nTag: {WHEEL_TAG}\n".encode()
    )
    if entry_points:
        files[f"{info}/entry_points.txt"] = entry_points.encode()
    record = "\n".join([*(_record_line(n, d) for n, d in files.items()), f"{info}/RECORD,,"]) + "\n"
    files[f"{info}/RECORD"] = record.encode()

    out = Path(out_dir) / wheel_name(version)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=_EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    tmp.replace(out)
    return out
