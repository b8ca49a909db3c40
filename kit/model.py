"""The base model and its LoRA/QLoRA adapter, built the same way on every shard.

    tokenizer = load_tokenizer(cfg)
    model = load_base_model(cfg)          # fp32/bf16/fp16, or 4-bit NF4 for QLoRA
    model = add_lora(model, cfg)          # PEFT LoRA on all linear layers, seeded init

Every shard seeds the LoRA init with `lora.init_seed`, so all adapters start
from the same A matrices; the merge does not depend on it (it is exact for any
adapters), but the shards then differ only by what their data taught them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kit.config import RunConfig
from kit.errors import ModelNotFound

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _model_path(cfg: RunConfig) -> str:
    """The local folder, or the Hub id, to load; a local path that isn't there is an error, not a download."""
    path = cfg.resolved_model_path()
    if Path(path).is_dir():
        return path
    if path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise ModelNotFound(
            f"model.name_or_path={cfg.model.name_or_path!r} -> {path} does not exist. "
            "The demo models are made by `python scripts/prepare_models.py` (make demo and make test run it); "
            "or set model.name_or_path to a Hub model id.",
            param="model.name_or_path",
        )
    return path


def load_tokenizer(cfg: RunConfig):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_model_path(cfg), revision=cfg.model.revision)
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out of attention and loss, so any id works; eos is always there.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(cfg: RunConfig):
    from transformers import AutoModelForCausalLM

    import kit.attention  # noqa: F401  registers attn_implementation="kit_packed_sdpa" with transformers
    from kit.platform import resolve_platform

    resolve_platform(cfg)  # a preset's `auto` knobs, if no caller resolved them yet (a no-op when none are left)
    kwargs = {"dtype": DTYPES[cfg.train.dtype], "attn_implementation": cfg.model.attn_implementation}
    if cfg.model.revision != "main":
        kwargs["revision"] = cfg.model.revision
    if cfg.model.load_in_4bit:
        kwargs["quantization_config"] = quantization_config(cfg)
        # bitsandbytes quantizes as the weights are placed: they must land on the one device that runs them.
        kwargs["device_map"] = {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}
    model = AutoModelForCausalLM.from_pretrained(_model_path(cfg), **kwargs)
    # A KV cache in training is wasted memory, and with padding-free batches it would
    # let packed examples attend to each other.
    model.config.use_cache = False
    return model


def quantization_config(cfg: RunConfig):
    """NF4 4-bit weights with double quantization: QLoRA's recipe, wherever bitsandbytes runs (CUDA, and CPU)."""
    from transformers import BitsAndBytesConfig

    from kit.platform import compute_dtype, require_bitsandbytes

    require_bitsandbytes("model.quantize=nf4")
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=DTYPES[compute_dtype(cfg)],
    )


def lora_config(cfg: RunConfig):
    from peft import LoraConfig

    targets = cfg.lora.target_modules
    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
        use_rslora=cfg.lora.use_rslora,
        bias="none",
        task_type="CAUSAL_LM",
        revision=cfg.model.revision,  # adapter_config.json records which revision of the base it was trained on
    )


def add_lora(model, cfg: RunConfig):
    from peft import get_peft_model, prepare_model_for_kbit_training

    if cfg.model.load_in_4bit:
        # Casts the remaining fp16/bf16 parameters (norms, embeddings) to fp32 for stable training, and turns on
        # input gradients so checkpointed blocks over frozen 4-bit weights still backpropagate to the adapter.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.model.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    # The same init on every shard, whatever the global RNG has been used for before.
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(cfg.lora.init_seed)
        model = get_peft_model(model, lora_config(cfg))
    return model
