"""Tests for kit/data/template.py: the end-of-turn text a template writes, its think-block handling,
and where answers lie in a rendering. No network.

    .venv/bin/python -m pytest tests/data/test_template.py
"""

import pytest
from chat_formats import ALL_FORMATS, format_tokenizer, plain_tokenizer, template_tokenizer
from transformers import AutoTokenizer

from kit.data.template import closing_text, read_conversation, split_think, template_facts


@pytest.fixture(scope="module")
def base_tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.mark.parametrize("name", ALL_FORMATS)
def test_the_closing_text_of_each_format_is_its_end_marker_with_or_without_special_tokens(base_tokenizer, name):
    end = ALL_FORMATS[name][3]
    assert template_facts(format_tokenizer(base_tokenizer, name)).closing == end
    plain = plain_tokenizer(base_tokenizer, name)
    assert template_facts(plain).closing == (plain.eos_token if end == "</s>" else end)


def test_a_template_without_an_end_marker_has_no_closing_text(base_tokenizer):
    assert template_facts(template_tokenizer(base_tokenizer, "no_end_marker")).closing == ""


@pytest.mark.parametrize(
    ("middle", "final", "closing"),
    [
        ("<|im_end|>\n<|im_start|>user\n", "<|im_end|>\n", "<|im_end|>"),  # the final text is all shared
        ("<|end|>\n<|user|>\nq<|end|>\n", "<|end|>\n<|endoftext|>", "<|end|>"),  # they part inside "<|"
        ("<|eot_id|><|start_header_id|>user", "<|eot_id|><|end_of_text|>", "<|eot_id|>"),  # no whitespace
        ("</s>[INST] q [/INST]", "</s>", "</s>"),
        (" </s><s>[INST]", " </s>", " </s>"),  # Llama-2's space before the marker is part of it
        ("\n\n### User:\nq", "", ""),  # nothing closes the answer
        ("\n\n### User:\nq", "\n\n", ""),  # layout only
    ],
)
def test_closing_text_is_what_both_continuations_share_cut_back_to_a_whole_marker(middle, final, closing):
    assert closing_text(middle, final) == closing


@pytest.mark.parametrize(
    ("name", "parses_think", "renders_final_reasoning"),
    [("qwen3_style", True, True), ("r1_distill_style", True, False), ("chatml", False, False)],
)
def test_template_facts_tell_how_a_template_treats_reasoning(
    base_tokenizer, name, parses_think, renders_final_reasoning
):
    facts = template_facts(format_tokenizer(base_tokenizer, name))
    assert (facts.parses_think, facts.renders_final_reasoning) == (parses_think, renders_final_reasoning)


def test_split_think_parts_a_content_at_its_last_think_close():
    assert split_think("<think>\nwhy\n</think>\n\nanswer") == ("\nwhy\n", "answer")
    assert split_think("no block here") is None
    assert split_think("why</think>answer") == ("why", "answer")  # an opening tag the data left out


def test_a_reading_places_each_answer_span_on_its_text_and_the_closing_right_after(base_tokenizer):
    tokenizer = format_tokenizer(base_tokenizer, "gemma")
    messages = [
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "  Hello.  "},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "Hello again."},
    ]
    reading = read_conversation(tokenizer, messages)
    answers = [reading.text[a.start : a.end] for a in reading.answers]
    assert answers == ["Hello.", "Hello again."]  # Gemma trims
    assert all(reading.text[a.end : a.closing_end] == "<end_of_turn>" for a in reading.answers)
