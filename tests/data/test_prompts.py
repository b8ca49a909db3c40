"""Tests for kit/data/prompts.py: the eval prompt is the training prefix of the last answer, and the
inference recipe says how a template's own generation prompt differs from it. No network.

    .venv/bin/python -m pytest tests/data/test_prompts.py
"""

import pytest
from chat_formats import ALL_FORMATS, FORMATS, format_tokenizer, plain_tokenizer
from transformers import AutoTokenizer

from kit.data.prompts import encode_prompt, prompt_recipe, trained_prompt
from kit.data.tokenize import IGNORE_INDEX, encode_conversation

QUESTION = [
    {"role": "system", "content": "Answer in JSON."},
    {"role": "user", "content": "Two plus two?"},
    {"role": "assistant", "content": '{"sum": 4}'},
]
WITH_REASONING = [QUESTION[1], {"role": "assistant", "content": '{"sum": 4}', "reasoning_content": "Two and two."}]
R1_QUESTION = QUESTION[1:]  # the R1-style fixture writes a system prompt as bare text; keep it simple


@pytest.fixture(scope="module")
def base_tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def training_prefix(tokenizer, messages):
    example = encode_conversation(tokenizer, messages, turns="last")
    first = next(i for i, label in enumerate(example["labels"]) if label != IGNORE_INDEX)
    return example["input_ids"][:first]


@pytest.mark.parametrize("plain", [False, True], ids=["special-markers", "plain-markers"])
@pytest.mark.parametrize("name", ALL_FORMATS)
@pytest.mark.parametrize("messages", [QUESTION, WITH_REASONING], ids=["answer", "reasoning"])
def test_the_eval_prompt_is_exactly_the_training_prefix_of_the_last_answer(base_tokenizer, name, plain, messages):
    tokenizer = (plain_tokenizer if plain else format_tokenizer)(base_tokenizer, name)
    assert encode_prompt(tokenizer, messages) == training_prefix(tokenizer, messages)


@pytest.mark.parametrize("name", FORMATS)
def test_templates_whose_generation_prompt_is_the_training_prefix_need_no_recipe(base_tokenizer, name):
    recipe = prompt_recipe(format_tokenizer(base_tokenizer, name), [QUESTION, QUESTION[1:]])
    assert recipe["matches"] and recipe["checked"] == 2
    assert "add_generation_prompt=True" in recipe["recipe"]


def test_qwen3_style_trained_without_reasoning_is_told_to_generate_with_enable_thinking_false(base_tokenizer):
    tokenizer = format_tokenizer(base_tokenizer, "qwen3_style")
    recipe = prompt_recipe(tokenizer, [QUESTION])
    assert not recipe["matches"]
    assert "enable_thinking=False" in recipe["recipe"] and repr("<think>\n\n</think>\n\n") in recipe["recipe"]
    # And following it gives the training prefix's text.
    prompt = tokenizer.apply_chat_template(
        QUESTION[:2], tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert prompt == trained_prompt(tokenizer, QUESTION)[1]


def test_qwen3_style_trained_with_reasoning_matches_its_own_thinking_generation_prompt(base_tokenizer):
    tokenizer = format_tokenizer(base_tokenizer, "qwen3_style")
    assert prompt_recipe(tokenizer, [WITH_REASONING])["matches"]
    assert trained_prompt(tokenizer, WITH_REASONING)[1].endswith("<|im_start|>assistant\n")  # <think> is trained


def test_r1_style_recipe_says_its_generation_prompt_opens_a_think_block_the_adapter_never_saw(base_tokenizer):
    tokenizer = format_tokenizer(base_tokenizer, "r1_distill_style")
    recipe = prompt_recipe(tokenizer, [R1_QUESTION, WITH_REASONING])
    assert not recipe["matches"] and recipe["differing"] == 2
    assert "opens a think block" in recipe["recipe"] and repr("<think>\n") in recipe["recipe"]
    generation = tokenizer.apply_chat_template(R1_QUESTION[:1], tokenize=False, add_generation_prompt=True)
    assert generation.removesuffix("<think>\n") == trained_prompt(tokenizer, R1_QUESTION)[1]


def test_a_recipe_that_holds_for_some_eval_conversations_says_for_how_many(base_tokenizer):
    tokenizer = format_tokenizer(base_tokenizer, "qwen3_style")
    recipe = prompt_recipe(tokenizer, [QUESTION, WITH_REASONING, QUESTION])
    assert recipe["differing"] == 2 and "2 of 3" in recipe["recipe"]


def test_a_conversation_without_an_answer_is_all_prompt(base_tokenizer):
    tokenizer = format_tokenizer(base_tokenizer, "llama3")
    assert encode_prompt(tokenizer, QUESTION[:2]) == encode_prompt(tokenizer, QUESTION)
