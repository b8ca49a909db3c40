"""kit's own wheel (kit/wheel.py): what it holds, that it installs as pip expects, and the version naming its code.

.venv/bin/python -m pytest -q tests/test_wheel.py    # seconds, no network
"""

import base64
import hashlib
import re
import zipfile

from kit.config import available_presets
from kit.wheel import build_wheel, kit_version, package_files, version_of, wheel_name, wheel_version


def test_the_wheel_holds_every_module_and_preset_and_names_this_version(tmp_path):
    wheel = build_wheel(tmp_path)
    assert wheel.name == wheel_name() == f"kit-{kit_version()}-py3-none-any.whl"
    assert wheel_version(wheel) == kit_version()
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"kit/__init__.py", "kit/train.py", "kit/bootstrap.py", "kit/data/tokenize.py"} <= names
    assert {f"kit/configs/{p}.yaml" for p in available_presets()} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    info = f"kit-{kit_version()}.dist-info"
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert f"\nVersion: {kit_version()}\n" in metadata
    assert "Requires-Dist: transformers" in metadata and "Provides-Extra: gpu" in metadata
    assert re.search(r'^Requires-Dist: bitsandbytes>=[0-9.]+; extra == "gpu"$', metadata, re.M)
    assert "kit = kit.cli:main" in zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()


def test_every_file_of_the_wheel_matches_its_record(tmp_path):
    zf = zipfile.ZipFile(build_wheel(tmp_path))
    record = zf.read(next(n for n in zf.namelist() if n.endswith("/RECORD"))).decode().splitlines()
    listed = {}
    for line in record:
        name, digest, size = line.rsplit(",", 2)
        listed[name] = (digest, size)
    assert set(listed) == set(zf.namelist())
    for name, (digest, size) in listed.items():
        if name.endswith("/RECORD"):
            assert digest == size == ""
            continue
        data = zf.read(name)
        assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert int(size) == len(data)


def test_the_same_code_builds_the_same_bytes(tmp_path):
    first = build_wheel(tmp_path / "a").read_bytes()
    assert build_wheel(tmp_path / "b").read_bytes() == first, "pushing a split again must change nothing"


def test_the_version_changes_with_any_byte_of_the_code():
    files = package_files()
    assert version_of(files) == kit_version()
    edited = dict(files, **{"kit/train.py": files["kit/train.py"] + b"\n# edited\n"})
    renamed = {("kit/configs/x.yaml" if k == "kit/configs/cpu-tiny.yaml" else k): v for k, v in files.items()}
    assert len({version_of(files), version_of(edited), version_of(renamed)}) == 3
    assert version_of(edited).split("+")[0] == kit_version().split("+")[0], "the release part stays"
