"""Presets and overrides: every shipped preset validates; bad keys and values are named.

.venv/bin/python -m pytest tests/test_config.py -q    # no network, no model
"""

import pytest

from kit.config import available_presets, expand_path, load_config, parse_overrides
from kit.errors import ConfigError


@pytest.mark.parametrize("preset", available_presets())
def test_every_shipped_preset_validates(preset):
    cfg = load_config(preset)
    assert cfg.train.max_steps >= 1 and cfg.lora.r >= 1


def test_the_presets_the_pipeline_needs_are_shipped():
    assert {"cpu-tiny", "cpu-demo", "colab-t4"} <= set(available_presets())


def test_every_preset_opens_with_the_command_that_runs_it():
    from kit.config import presets_dir

    for path in presets_dir().glob("*.yaml"):
        head = path.read_text().splitlines()[:6]
        assert any("python -m kit" in line or "papermill" in line for line in head), path.name


def test_overrides_replace_preset_values_with_their_types():
    cfg = load_config(
        "cpu-tiny", ["train.lr=1e-4", "lora.r=4", "train.precision=bf16", "lora.target_modules=[q_proj, v_proj]"]
    )
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.lora.r == 4
    assert cfg.lora.target_modules == "q_proj,v_proj"
    assert (cfg.train.bf16, cfg.train.fp16, cfg.train.dtype) == (True, False, "bfloat16")


@pytest.mark.parametrize(
    "old,new",
    [
        ("model.dtype=bfloat16", "train.precision"),
        ("train.fp16=true", "train.precision=fp16"),
        ("train.bf16=true", "train.precision=bf16"),
        ("model.load_in_4bit=true", "model.quantize=nf4"),
        ("data.last_turn_only=true", "data.turns=last"),
    ],
)
def test_an_older_spelling_of_a_knob_is_refused_with_the_key_that_replaced_it(old, new):
    with pytest.raises(ConfigError) as err:
        load_config("cpu-tiny", [old])
    assert f"{old.split('=')[0]} is no longer a key: use {new}" in str(err.value)


def test_an_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ConfigError) as err:
        load_config("cpu-tiny", ["train.max_step=3"])
    assert "'train.max_step'" in str(err.value) and "did you mean 'train.max_steps'" in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        load_config("cpu-tiny", ["lora.r=2.5", "bogus.key=1", "train.save_steps=0"])
    message = str(err.value)
    assert "lora.r=2.5 is not an integer" in message
    assert "'bogus.key'" in message
    assert "train.save_steps=0: must be at least 1" in message


def test_an_unknown_key_inside_a_preset_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: 3\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'train.learning_rate'"):
        load_config(str(bad))


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="cpu-tiny"):
        load_config("no-such-preset")


def test_notebook_overrides_split_on_semicolons_and_newlines():
    assert parse_overrides("train.lr=1e-4; lora.r=8\ntrain.seed=3") == ["train.lr=1e-4", "lora.r=8", "train.seed=3"]
    assert parse_overrides("") == []


def test_kit_cache_expands_to_its_default_or_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("KIT_CACHE", raising=False)
    assert expand_path("${KIT_CACHE}/models").endswith(".cache/kit/models")
    monkeypatch.setenv("KIT_CACHE", str(tmp_path))
    assert expand_path("${KIT_CACHE}/models") == f"{tmp_path}/models"


GPU_PRESETS = {"colab-t4": 1, "kaggle-t4x2": 2, "kaggle-p100": 1, "a100-40g": 1, "h100-80g": 1, "rtx4090": 1}


def test_every_runtime_has_a_preset():
    assert set(GPU_PRESETS) | {"cpu-tiny", "cpu-demo"} <= set(available_presets())


@pytest.mark.parametrize("preset,gpus", GPU_PRESETS.items())
def test_gpu_presets_train_the_same_global_batch_so_shards_are_comparable(preset, gpus):
    t = load_config(preset).train
    assert t.micro_batch_size * t.grad_accum * gpus == 16


@pytest.mark.parametrize("preset,hours", [("kaggle-t4x2", 12), ("kaggle-p100", 12), ("colab-t4", 4)])
def test_session_presets_stop_inside_their_platforms_limit(preset, hours):
    assert 0 < load_config(preset).train.session_hours <= hours


def test_cpu_presets_have_no_session_limit_and_no_platform_auto():
    for preset in ("cpu-tiny", "cpu-demo"):
        cfg = load_config(preset)
        assert cfg.train.session_hours == 0 and cfg.train.precision == "fp32" and cfg.model.quantize == "none"


def test_a_bad_precision_or_time_limit_is_named():
    with pytest.raises(ConfigError) as err:
        load_config("cpu-tiny", ["train.precision=fp8", "train.session_hours=-1"])
    assert "train.precision='fp8'" in str(err.value) and "train.session_hours=-1" in str(err.value)


def test_a_preset_with_a_yaml_syntax_error_is_named_with_its_line(tmp_path):
    preset = tmp_path / "mine.yaml"
    preset.write_text("train:\n  lr: 1e-4\n  max_steps: [3\n")
    with pytest.raises(ConfigError, match=r"mine.yaml:\d+: not valid YAML .*fix that line"):
        load_config(str(preset))


def test_an_override_that_is_not_yaml_is_type_checked_as_text():
    with pytest.raises(ConfigError, match=r"train.max_steps='\[3' is not an integer"):
        load_config("cpu-tiny", ["train.max_steps=[3"])


def test_data_turns_takes_all_last_or_split_and_names_them_otherwise():
    assert load_config("cpu-tiny").data.turns == "all"
    assert load_config("cpu-tiny", ["data.turns=split"]).data.turns == "split"
    with pytest.raises(ConfigError, match="data.turns='first': use one of all, last, split"):
        load_config("cpu-tiny", ["data.turns=first"])
