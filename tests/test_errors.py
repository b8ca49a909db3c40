"""One family of user errors: every one is a KitError, and `python -m kit` prints it without a traceback.

.venv/bin/python -m pytest -q tests/test_errors.py    # ~20 s, no network
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kit.errors
from kit.cli import main
from kit.errors import KitError

ROOT = Path(__file__).resolve().parent.parent


def test_every_error_kit_defines_is_a_kit_error_and_keeps_its_older_base():
    kinds = [c for _, c in inspect.getmembers(kit.errors, inspect.isclass) if issubclass(c, BaseException)]
    assert len(kinds) > 10 and all(issubclass(c, KitError) for c in kinds)
    assert issubclass(kit.errors.ConfigError, ValueError) and issubclass(kit.errors.ModelNotFound, FileNotFoundError)
    assert issubclass(kit.errors.MissingPackageError, ModuleNotFoundError)


def test_no_module_defines_an_error_of_its_own_outside_the_family():
    import ast

    own = {}
    for path in (ROOT / "kit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception", "Tokens")) for b in node.bases
            ):
                own[node.name] = path.name
    # NoTrainableTokens: a DataError that tokenizing counts and drops; KitInstallError: the install cell's
    # own (it runs before kit is installed, so it can import nothing of kit's).
    assert own == {"NoTrainableTokens": "tokenize.py", "KitInstallError": "bootstrap.py"} | {
        name: "errors.py" for name in own if own[name] == "errors.py"
    }
    from kit.data.tokenize import NoTrainableTokens

    assert issubclass(NoTrainableTokens, kit.errors.DataError)


def test_an_error_names_its_parameters_and_the_cli_adds_their_flags(tmp_path, capsys):
    assert main(["split", str(tmp_path / "x.jsonl"), "--shards", "0", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err == "error: num_shards=0: need at least 1 shard (on the command line: --shards)\n"


def train_argv(data, output, *overrides) -> list[str]:
    """`train` on the tiny preset, shard 0, with `--set` overrides."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    return ["train", "--preset", "cpu-tiny", "--data", str(data), "--shard", "0", "--output", str(output), *sets]


@pytest.fixture
def untemplated_model(tiny_model_dir, tmp_path) -> Path:
    """The tiny model with its chat template taken away (a base model nobody gave a template)."""
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model_dir, model)
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    return model


def test_training_with_a_tokenizer_without_a_chat_template_is_one_message(
    untemplated_model, small_split, tmp_path, capsys
):
    code = main(train_argv(small_split, tmp_path / "run", f"model.name_or_path={untemplated_model}"))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "chat template" in err, err


def test_a_missing_model_is_one_line_without_a_traceback_from_the_command_line(small_split, tmp_path):
    missing = tmp_path / "models" / "nowhere"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "kit", *train_argv(small_split, tmp_path / "run", f"model.name_or_path={missing}")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and f"{missing} does not exist" in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]  # one line, the last
    assert result.stderr.rstrip().endswith(line) and line.endswith(
        "(on the command line: --set model.name_or_path=...)"
    )
    traced = subprocess.run(result.args, capture_output=True, text=True, cwd=ROOT, env={**env, "KIT_TRACEBACK": "1"})
    assert traced.returncode != 0 and "Traceback" in traced.stderr and "ModelNotFound" in traced.stderr


def test_merging_adapters_that_cannot_be_merged_is_one_message(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    sources = []
    for name, targets in (("a", ["q_proj"]), ("b", ["v_proj"])):
        model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, lora_alpha=4, target_modules=targets))
        model.save_pretrained(tmp_path / name)
        sources.append(str(tmp_path / name))
    assert main(["merge", *sources, "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: adapters are not compatible") and "target_modules" in err
    assert not (tmp_path / "merged").exists()
