# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Merge the shard adapters
# **Strategy**: `average` (equal weights), `weighted` (`weights`, or each shard's training-example count),
# `best` (the shard adapter with the lowest eval loss; near-ties go to the higher JSON validity rate) or
# `greedy` (model soup: add shards, best first, only while the average's eval loss drops).
# **Method**: `exact` concatenates the factors, so the update is exactly the weighted average (rank = sum of
# ranks); `full` merges it into the base weights (a full model); `svd` compresses it to `rank` and reports the
# error; `linear` is PEFT's factor averaging, a labelled baseline only (it is not the average of the updates).
# With `eval_data` set, the base model, every shard adapter and every merge candidate are scored side by side
# on the shared eval split; the table is saved as `OUT/merge_report.json` and `OUT/README.md` is the model card.
#
#     papermill notebooks/merge.ipynb out/merge.ipynb -p run runs/my-run -p out merged -p eval_data shards

# %% tags=["parameters"]
run = "runs/my-run"  # @param {type:"string"}
sources = ""  # @param {type:"string"}
out = "merged"  # @param {type:"string"}
strategy = "average"  # @param ["average", "weighted", "best", "greedy"]
weights = ""  # @param {type:"string"}
method = "exact"  # @param ["exact", "full", "svd", "linear"]
rank = 0  # @param {type:"integer"}
preset = "colab-t4"  # @param ["colab-t4", "cpu-demo", "cpu-tiny"] {allow-input: true}
overrides = ""  # @param {type:"string"}
eval_data = ""  # @param {type:"string"}
schema = ""  # @param {type:"string"}
# kit_source: "" installs the kit wheel that eval_data's repo carries (`kit split --push-to` put it there);
# or a pip spec: git+https://github.com/YOU/kit.git, a folder, a .whl file.
kit_source = ""  # @param {type:"string"}

# %%
# @title Install kit (skipped where it is installed) { display-mode: "form" }
# Written from kit/bootstrap.py by scripts/sync_notebooks.py: edit that file, not this cell.
import importlib.metadata  # noqa: E401
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

EXTRAS_ENV = "KIT_INSTALL_EXTRAS"  # e.g. "gpu": install extras without a CUDA GPU (the tests' 4-bit runs)
PINNED = ("torch", "torchvision", "torchaudio")  # the runtime's builds: kept as they are


class KitInstallError(RuntimeError):
    """kit could not be installed; the message says what failed and which parameter fixes it."""


def platform_secret(name: str = "HF_TOKEN") -> str | None:
    """The Colab or Kaggle secret `name`, or None off those platforms or without that secret."""
    try:
        from google.colab import userdata

        token = userdata.get(name)
        if token:
            return token
    except Exception:  # not Colab, no such secret, or notebook access to it switched off
        pass
    try:
        from kaggle_secrets import UserSecretsClient

        return UserSecretsClient().get_secret(name) or None
    except Exception:  # not Kaggle, or the secret is not attached to this notebook
        return None


def _python(code: str, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **({"HF_TOKEN": token} if token else {}))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (proc.stderr or proc.stdout or "").splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


def installed_kit_version() -> str | None:
    """The version of the kit `import kit.train` finds in a fresh interpreter, or None when that fails."""
    proc = _python("import kit.train; from kit.wheel import kit_version; print(kit_version())")
    return proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None


_FETCH_WHEEL = """
import json, sys
from huggingface_hub import hf_hub_download
repo_type, repo_id, out = sys.argv[1:]
manifest = json.loads(open(hf_hub_download(repo_id, "manifest.json", repo_type=repo_type)).read())
kit = manifest.get("kit") or {}
path = hf_hub_download(repo_id, kit["wheel"], repo_type=repo_type, local_dir=out) if kit.get("wheel") else None
print(json.dumps({"version": kit.get("version"), "wheel": path}))
"""


def run_wheel(data: str) -> tuple[str | None, str | None]:
    """(version, local wheel path) of the kit that DATA's manifest names; (None, None) when it names none."""
    if not data.startswith("hf://"):
        manifest_path = Path(data) / "manifest.json"
        if not manifest_path.is_file():
            raise KitInstallError(
                f"data={data!r}: no manifest.json there to name a kit wheel; set data to the split "
                "(`kit split --out`), or kit_source to a pip spec"
            )
        kit = json.loads(manifest_path.read_text()).get("kit") or {}
        return kit.get("version"), str((Path(data) / kit["wheel"]).resolve()) if kit.get("wheel") else None
    rest = data[len("hf://") :].strip("/")
    repo_type, repo_id = ("dataset", rest[len("datasets/") :]) if rest.startswith("datasets/") else ("model", rest)
    proc = _python(_FETCH_WHEEL, repo_type, repo_id, tempfile.mkdtemp(prefix="kit-wheel-"), token=platform_secret())
    if proc.returncode != 0:
        raise KitInstallError(
            f"could not read the kit wheel from {data} ({_last_line(proc)}). Without network to the Hub, or "
            "without a token for a private repo (add the HF_TOKEN secret), set kit_source to a wheel file or "
            "pip spec this runtime can install"
        )
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    return found["version"], found["wheel"]


def install_extras(cuda: bool) -> list[str]:
    """kit's extras to install: gpu (bitsandbytes) with a CUDA GPU, plus whatever $KIT_INSTALL_EXTRAS names."""
    wanted = {e.strip() for e in os.environ.get(EXTRAS_ENV, "").split(",") if e.strip()}
    return sorted(wanted | ({"gpu"} if cuda else set()))


def pip_target(spec: str, extras: list[str]) -> str:
    """What pip is given: `kit[gpu] @ git+https://...` for a URL, `/path/kit.whl[gpu]` for a file or folder."""
    suffix = f"[{','.join(extras)}]" if extras else ""
    return f"kit{suffix} @ {spec}" if "://" in spec else f"{spec}{suffix}"


def pip_install(spec: str) -> str:
    """pip install kit from `spec`, with the extras wanted here and the runtime's torch pinned; say which extras."""
    pins = []
    for name in PINNED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    constraints = Path(tempfile.mkdtemp(prefix="kit-install-")) / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    import torch  # on every runtime already, and kept as it is (pinned above)

    extras = install_extras(torch.cuda.is_available())
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "-c", str(constraints), pip_target(spec, extras)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise KitInstallError(
            f"pip could not install kit from {spec}: {_last_line(proc)}. "
            "Set kit_source to a wheel file, a checkout's folder or a git URL this runtime can reach"
        )
    return f"{', '.join(extras)} extra" if extras else "no extras"


def install_kit(kit_source: str = "", data: str = "") -> None:
    """Make `import kit.train` work in this kernel, and print one line saying what was done."""
    installed = installed_kit_version()
    if kit_source:
        if installed:
            return _say(f"kit {installed} is installed; kit_source={kit_source!r} was not needed")
        spec = str(Path(kit_source).resolve()) if Path(kit_source).exists() else kit_source
    else:
        if not data:
            if installed:
                return _say(f"kit {installed} is installed")
            raise KitInstallError(
                "kit is not installed and there is no data repo to take its wheel from: "
                "set data (the split that `kit split --push-to` made) or kit_source (a pip spec)"
            )
        try:
            wanted, spec = run_wheel(data)
        except KitInstallError as err:
            if not installed:
                raise
            # kit is here: a data repo that can't name its wheel is the data cells' problem, reported there.
            return _say(f"kit {installed} is installed (its version could not be checked against {data}: {err})")
        if installed and (wanted is None or wanted == installed):
            return _say(f"kit {installed} is installed" + ("" if wanted is None else f", the version {data} names"))
        if spec is None:
            raise KitInstallError(
                f"{data} carries no kit wheel (it was pushed by an older kit): push the split again "
                "with `python -m kit split ... --push-to`, or set kit_source to a pip spec"
            )
    extras = pip_install(spec)
    importlib.invalidate_caches()
    now = installed_kit_version()
    if now is None:
        raise KitInstallError(
            f"kit from {spec} installed, but `import kit.train` still fails: set kit_source to "
            "another kit (a wheel file, a checkout's folder or a git URL)"
        )
    note = f"installed kit {now} ({extras}) from {kit_source or data}; torch {importlib.metadata.version('torch')} kept"
    if "kit" in sys.modules and installed:  # this kernel already imported the old kit: it keeps it until a restart
        note += f". This session imported kit {installed} before: restart the runtime, then Run all again"
    return _say(note)


def _say(line: str) -> None:
    print(line, flush=True)


install_kit(kit_source, eval_data)

# %%
# `sources` (comma-separated shard or adapter folders) overrides `run`'s finished shards.
# `preset`/`overrides` only set how candidates are scored (the model they load, eval sizes).
import kit

kit.show_errors_first()  # a merge kit refuses (incompatible adapters, a bad `out`) shows why first
# A run trained in rounds (train.round_steps): its last round's global is the fleet's adapter; made here when
# no shard could (one never came back), with the outer step the shards recorded. Nothing for other runs.
fleet_global = None if sources else kit.close_round(run)
source_list = [s.strip() for s in sources.split(",") if s.strip()] or kit.find_shard_adapters(run)
evaluator = None
if eval_data:
    cfg = kit.eval_config(preset, kit.parse_overrides(overrides), source_list)
    evaluator = kit.adapter_evaluator(cfg, eval_data, kit.load_schema(schema) if schema else None)
report = kit.merge_and_compare(
    source_list, out, strategy, kit.parse_weights(weights), method, rank or None,
    evaluator, eval_data=eval_data or None, schema=schema or None,
)
merge = report["merge"]
print(f"{strategy} ({method}): chose {report['chosen']}; weights {dict(zip(merge['names'], merge['weights']))}; "
      f"rank {merge['rank']}; relative error {merge['relative_error']:.3g}")
print(*report["compatibility_notes"], sep="\n")
print(kit.format_scores(report["results"]))

# %%
# The scores as bars (needs matplotlib, which Colab and Kaggle have; the table above holds the same numbers).
if report["results"]:
    png = kit.plot_comparison(report["results"], f"{out}/merge_scores.png")  # None (and a line why) without matplotlib
    if png is not None:
        from IPython.display import Image, display

        display(Image(str(png)))
