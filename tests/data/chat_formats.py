"""Chat formats for the tokenize, template and prompt tests: each a template written for these tests
(tests/fixtures/chat_templates/*.jinja) on a copy of the real SmolLM2 tokenizer, with the format's markers
added as special tokens (`format_tokenizer`) or left as plain text (`plain_tokenizer`, as when a base
model is given a chat template without its markers).
"""

import copy
from pathlib import Path

from kit.data.tokenize import IGNORE_INDEX

TEMPLATES = Path(__file__).resolve().parent.parent / "fixtures" / "chat_templates"

# format -> (fixture, special tokens to add, tokenizer attributes to set, end-of-turn marker, trims content,
#            text the tokenizer merges into the first answer token from the template)
FORMATS = {
    "chatml": ("chatml", [], {}, "<|im_end|>", False, ""),
    "qwen2_5": ("qwen2_5", [], {}, "<|im_end|>", False, ""),
    "llama3": (
        "llama3",
        ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        "<|eot_id|>",
        True,
        "",
    ),
    # Mistral writes "[/INST] answer": the BPE token " answer" carries the template's space.
    "mistral": (
        "mistral",
        ["<s>", "</s>", "[INST]", "[/INST]"],
        {"bos_token": "<s>", "eos_token": "</s>"},
        "</s>",
        True,
        " ",
    ),
    "gemma": (
        "gemma",
        ["<bos>", "<start_of_turn>", "<end_of_turn>"],
        {"bos_token": "<bos>"},
        "<end_of_turn>",
        True,
        "",
    ),
    "phi3": ("phi3", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], {}, "<|end|>", False, ""),
    "zephyr": (
        "zephyr",
        ["<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"],
        {"eos_token": "</s>"},
        "</s>",
        False,
        "",
    ),
    "chatml_generation": ("chatml_generation", [], {}, "<|im_end|>", False, ""),
}

R1_MARKERS = ["<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"]
REASONING_FORMATS = {
    "qwen3_style": ("qwen3_style", ["<think>", "</think>"], {}, "<|im_end|>", False, ""),
    "r1_distill_style": (
        "r1_distill_style",
        R1_MARKERS,
        {"bos_token": R1_MARKERS[0], "eos_token": R1_MARKERS[3]},
        R1_MARKERS[3],
        False,
        "",
    ),
}
ALL_FORMATS = {**FORMATS, **REASONING_FORMATS}


def format_tokenizer(base, name):
    fixture, specials, attributes, *_ = ALL_FORMATS[name]
    tokenizer = copy.deepcopy(base)  # never touch the shared tokenizer
    tokenizer.add_tokens(specials, special_tokens=True)
    for attribute, value in attributes.items():
        setattr(tokenizer, attribute, value)
    tokenizer.chat_template = (TEMPLATES / f"{fixture}.jinja").read_text()
    return tokenizer


def plain_tokenizer(base, name):
    """The format's template on a tokenizer that knows none of its markers: each is plain text."""
    fixture, _, attributes, *_ = ALL_FORMATS[name]
    tokenizer = copy.deepcopy(base)
    for attribute, value in attributes.items():
        setattr(tokenizer, attribute, value)  # rendered by the template, split as plain text by the tokenizer
    tokenizer.chat_template = (TEMPLATES / f"{fixture}.jinja").read_text()
    return tokenizer


def template_tokenizer(base, fixture):
    """A copy of `base` with only its chat template replaced."""
    tokenizer = copy.deepcopy(base)
    tokenizer.chat_template = (TEMPLATES / f"{fixture}.jinja").read_text()
    return tokenizer


def labelled_runs(tokenizer, example) -> list[str]:
    """The decoded text of each run of labelled tokens, in order."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        assert label in (IGNORE_INDEX, token), "a label must be its input token or IGNORE_INDEX"
        if label != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return [tokenizer.decode(run) for run in runs + ([current] if current else [])]
