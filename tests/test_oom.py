"""Out-of-memory backoff at the start of a run, with an injected OOM (no GPU needed).

.venv/bin/python -m pytest -q tests/test_oom.py    # ~30 s on 2 cores, no network
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers.models.llama import modeling_llama

from kit.config import load_config
from kit.oom import is_out_of_memory
from kit.train import train_shard

OVERRIDES = ["train.max_steps=4", "train.save_steps=2", "eval.generate_samples=2", "eval.max_new_tokens=8"]


PADDED = [*OVERRIDES, "data.padding_free=false"]  # micro-batches of examples (the packed one: its own test)


def fail_above(monkeypatch, max_rows):
    """Make the model's training forward raise CUDA's OOM for any micro-batch larger than max_rows."""
    forward = modeling_llama.LlamaForCausalLM.forward

    def limited(self, input_ids=None, *args, **kwargs):
        if self.training and input_ids is not None and input_ids.shape[0] > max_rows:  # eval batches are not ours
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected: {input_ids.shape[0]} rows > {max_rows})")
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaForCausalLM, "forward", limited)


def test_oom_errors_are_recognised_by_type_and_by_message():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("x"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch")) and not is_out_of_memory(ValueError("out of memory"))


def test_an_oom_halves_the_micro_batch_and_keeps_the_global_batch(small_split, tmp_path, monkeypatch, capsys):
    fail_above(monkeypatch, 2)
    metrics = train_shard(load_config("cpu-tiny", PADDED), small_split, 0, tmp_path / "backoff")
    t = metrics["config"]["train"]
    assert (t["micro_batch_size"], t["grad_accum"]) == (2, 2) and metrics["steps"] == 4
    assert "out of memory at micro-batch 4 x accumulation 1: retrying with 2 x 2" in capsys.readouterr().out
    monkeypatch.undo()
    # The retried run is exactly the run one would have started with 2 x 2.
    direct = train_shard(
        load_config("cpu-tiny", [*PADDED, "train.micro_batch_size=2", "train.grad_accum=2"]),
        small_split,
        0,
        tmp_path / "direct",
    )
    a = load_file(str(tmp_path / "backoff" / "shard-00" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "direct" / "shard-00" / "adapter" / "adapter_model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert direct["steps"] == 4


def test_an_oom_at_micro_batch_one_is_raised_with_the_fix(small_split, tmp_path, monkeypatch, capsys):
    fail_above(monkeypatch, 0)
    with pytest.raises(
        torch.cuda.OutOfMemoryError, match="at the smallest micro-batch.*; lower train.micro_batch_size"
    ):
        train_shard(load_config("cpu-tiny", PADDED), small_split, 0, tmp_path)
    out = capsys.readouterr().out
    assert "retrying with 2 x 2" in out and "retrying with 1 x 4" in out
    assert json.loads((tmp_path / "shard-00" / "status.json").read_text())["state"] == "failed"


def test_a_packed_run_halves_its_token_budget_and_doubles_the_accumulation(small_split, tmp_path, monkeypatch, capsys):
    forward = modeling_llama.LlamaForCausalLM.forward

    def limited(self, input_ids=None, *args, **kwargs):  # a packed row is one row: its length is the budget
        if self.training and input_ids is not None and input_ids.shape[1] > 300:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected: {input_ids.shape[1]} tokens > 300)")
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(modeling_llama.LlamaForCausalLM, "forward", limited)
    metrics = train_shard(load_config("cpu-tiny", OVERRIDES), small_split, 0, tmp_path)  # budget 512, max_length 256
    t = metrics["config"]["train"]
    assert (t["max_tokens_per_batch"], t["grad_accum"]) == (256, 2)
    assert (
        "out of memory at 512 tokens a micro-batch x accumulation 1: retrying with 256 x 2" in capsys.readouterr().out
    )
