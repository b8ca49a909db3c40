"""Tests for kit/data/tokenize.py: assistant-only labels for every chat template format, errors,
truncation, the eval prompt and the tokenized-data cache.

Each format is a template written for these tests (tests/fixtures/chat_templates/*.jinja) applied to a
copy of the real SmolLM2 tokenizer, with that format's markers added as special tokens or left as plain
text (tests/data/chat_formats.py). No network.

    .venv/bin/python -m pytest tests/data/test_tokenize.py
"""

import copy

import pytest
from chat_formats import (
    FORMATS,
    REASONING_FORMATS,
    TEMPLATES,
    format_tokenizer,
    labelled_runs,
    plain_tokenizer,
    template_tokenizer,
)
from transformers import AutoTokenizer

from kit.data.prompts import encode_prompt
from kit.data.tokenize import IGNORE_INDEX, NoTrainableTokens, encode_conversation, encode_examples, encode_records
from kit.errors import ChatTemplateError

SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
CONVERSATIONS = {
    "multi_turn_with_system": [
        SYSTEM,
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome is the capital of Italy."},
    ],
    "multi_turn_without_system": [
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven is prime."},
        {"role": "user", "content": "Another one?"},
        {"role": "assistant", "content": "Eleven."},
    ],
    "non_ascii": [
        SYSTEM,
        {"role": "user", "content": "Wie groß ist die Wohnung?"},
        {"role": "assistant", "content": "Größe 120 m² 🏠"},
    ],
}


@pytest.fixture(scope="module")
def base_tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def tokenizers(base_tokenizer):
    return {name: format_tokenizer(base_tokenizer, name) for name in FORMATS}


def labelled_text(tokenizer, example):
    assert len(example["labels"]) == len(example["input_ids"])
    for token, label in zip(example["input_ids"], example["labels"]):
        assert label in (IGNORE_INDEX, token), "a label must be its input token or IGNORE_INDEX"
    return tokenizer.decode([label for label in example["labels"] if label != IGNORE_INDEX])


def expected_labelled_text(name, messages):
    *_, end, trims, lead = FORMATS[name]
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    return "".join(lead + (answer.strip() if trims else answer) + end for answer in answers)


def turn_starts(example):
    """Index of the first token of each labelled run."""
    labels = example["labels"]
    return [i for i, label in enumerate(labels) if label != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)]


# -- what is labelled -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CONVERSATIONS)
@pytest.mark.parametrize("name", FORMATS)
def test_labelled_tokens_decode_to_exactly_the_answers_and_their_end_markers(tokenizers, name, case):
    tokenizer, messages = tokenizers[name], CONVERSATIONS[case]
    example = encode_conversation(tokenizer, messages)
    assert labelled_text(tokenizer, example) == expected_labelled_text(name, messages)


WHITESPACE = [
    {"role": "user", "content": "  Pad me.  "},
    {"role": "assistant", "content": "  Padded answer.\n\n"},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "\tTabbed answer. "},
]


@pytest.mark.parametrize("name", FORMATS)
def test_whitespace_around_an_answer_is_labelled_as_the_template_writes_it(tokenizers, name):
    *_, end, trims, lead = FORMATS[name]
    if trims:
        expected = f"{lead}Padded answer.{end}{lead}Tabbed answer.{end}"
    else:
        # Kept, except the first of the two leading spaces: the tokenizer fuses it with the header's
        # newline into one token ("\n "), which belongs to the generation prompt and is not trained.
        expected = f" Padded answer.\n\n{end}\tTabbed answer. {end}"
    example = encode_conversation(tokenizers[name], WHITESPACE)
    assert labelled_text(tokenizers[name], example) == expected


@pytest.mark.parametrize("name", FORMATS)
def test_the_newline_after_an_end_marker_and_the_next_header_are_not_labelled(tokenizers, name):
    tokenizer = tokenizers[name]
    example = encode_conversation(tokenizer, CONVERSATIONS["multi_turn_with_system"])
    end_id = tokenizer.convert_tokens_to_ids(FORMATS[name][3])
    ends = [i for i, label in enumerate(example["labels"]) if label == end_id]
    assert len(ends) == 2
    for i in ends:
        assert i + 1 == len(example["labels"]) or example["labels"][i + 1] == IGNORE_INDEX


def test_the_tokenizers_own_smollm2_template_labels_like_the_chatml_fixture(base_tokenizer, tokenizers):
    messages = CONVERSATIONS["multi_turn_without_system"]
    shipped = encode_conversation(base_tokenizer, messages)
    assert shipped == encode_conversation(tokenizers["chatml"], messages)
    assert labelled_text(base_tokenizer, shipped) == "Seven is prime.<|im_end|>Eleven.<|im_end|>"


def test_an_answer_that_repeats_the_question_is_labelled_in_the_answer(tokenizers):
    tokenizer = tokenizers["chatml"]
    messages = [
        {"role": "user", "content": "Reply with: OK"},
        {"role": "assistant", "content": "OK"},
    ]
    example = encode_conversation(tokenizer, messages)
    assert labelled_text(tokenizer, example) == "OK<|im_end|>"
    assert turn_starts(example) == [len(encode_prompt(tokenizer, messages))]


def test_mistral_labels_are_right_although_rendering_a_prefix_is_not_a_prefix_of_the_whole(tokenizers):
    tokenizer = tokenizers["mistral"]
    messages = [
        SYSTEM,
        {"role": "user", "content": "Say hi"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "Say hi again"},
        {"role": "assistant", "content": "hi again"},
    ]
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    first_prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert not whole.startswith(first_prompt)  # the system prompt moved to the last user turn
    example = encode_conversation(tokenizer, messages)
    assert labelled_text(tokenizer, example) == " hi</s> hi again</s>"


@pytest.mark.parametrize("name", ["chatml", "llama3", "mistral", "gemma"])
def test_last_turn_only_labels_only_the_final_answer(tokenizers, name):
    tokenizer, messages = tokenizers[name], CONVERSATIONS["multi_turn_with_system"]
    example = encode_conversation(tokenizer, messages, turns="last")
    assert labelled_text(tokenizer, example) == expected_labelled_text(name, messages[-1:])
    assert example["input_ids"] == encode_conversation(tokenizer, messages)["input_ids"]


@pytest.mark.parametrize("name", FORMATS)
def test_the_eval_prompt_is_the_text_before_the_last_answer(tokenizers, name):
    tokenizer, messages = tokenizers[name], CONVERSATIONS["multi_turn_with_system"]
    example = encode_conversation(tokenizer, messages)
    prompt = encode_prompt(tokenizer, messages)
    before_last_answer = example["input_ids"][: turn_starts(example)[-1]]
    assert prompt == before_last_answer  # the very tokens training conditioned the answer on


def test_the_eval_prompt_ends_with_the_generation_prompt_and_drops_a_trailing_user_turn(tokenizers):
    tokenizer = tokenizers["llama3"]
    messages = CONVERSATIONS["multi_turn_with_system"][:3]
    prompt_text = tokenizer.decode(encode_prompt(tokenizer, messages))
    assert prompt_text.endswith("France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    unanswered = tokenizer.decode(encode_prompt(tokenizer, messages[:2]))
    assert unanswered == prompt_text  # no assistant message: the whole conversation is the prompt


# -- {% generation %} blocks --------------------------------------------------------------------------


def test_generation_blocks_mark_the_same_tokens_as_the_located_answers(tokenizers):
    tokenizer, messages = tokenizers["chatml_generation"], CONVERSATIONS["non_ascii"]
    example = encode_conversation(tokenizer, messages)
    marked = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    assert marked["input_ids"] == example["input_ids"]
    assert list(marked["assistant_masks"]) == [int(label != IGNORE_INDEX) for label in example["labels"]]


def test_generation_blocks_that_also_wrap_the_role_header_are_refused(base_tokenizer):
    tokenizer = copy.deepcopy(base_tokenizer)
    tokenizer.chat_template = (TEMPLATES / "chatml_generation_wraps_header.jinja").read_text()
    with pytest.raises(ChatTemplateError, match="generation"):
        encode_conversation(tokenizer, CONVERSATIONS["multi_turn_without_system"])


# -- errors ----------------------------------------------------------------------------------------------


def test_a_tokenizer_without_a_chat_template_raises_chat_template_error(base_tokenizer):
    tokenizer = copy.deepcopy(base_tokenizer)
    tokenizer.chat_template = None
    with pytest.raises(ChatTemplateError, match="no chat template.*chat_template"):
        encode_conversation(tokenizer, CONVERSATIONS["multi_turn_without_system"])
    with pytest.raises(ChatTemplateError):
        encode_prompt(tokenizer, CONVERSATIONS["multi_turn_without_system"])


def test_a_template_that_rewrites_the_answer_raises_chat_template_error(base_tokenizer):
    tokenizer = copy.deepcopy(base_tokenizer)
    tokenizer.chat_template = (TEMPLATES / "rewrites_assistant.jinja").read_text()
    with pytest.raises(ChatTemplateError, match="Fix:"):
        encode_conversation(tokenizer, CONVERSATIONS["multi_turn_without_system"])


def test_a_conversation_the_template_refuses_raises_chat_template_error(tokenizers):
    messages = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
    ]
    with pytest.raises(ChatTemplateError, match="alternate"):
        encode_conversation(tokenizers["gemma"], messages)


def test_a_conversation_without_an_assistant_raises_no_trainable_tokens_no_assistant(tokenizers):
    with pytest.raises(NoTrainableTokens) as raised:
        encode_conversation(tokenizers["chatml"], [SYSTEM, {"role": "user", "content": "Hello?"}])
    assert raised.value.reason == "no_assistant"


# -- truncation ----------------------------------------------------------------------------------------


def test_truncation_keeps_the_start_and_labels_what_survives_of_the_answer(tokenizers):
    tokenizer, messages = tokenizers["chatml"], CONVERSATIONS["non_ascii"]
    full = encode_conversation(tokenizer, messages)
    answer_start = turn_starts(full)[0]
    cut = encode_conversation(tokenizer, messages, max_length=answer_start + 2)
    assert cut["input_ids"] == full["input_ids"][: answer_start + 2]
    assert cut["labels"] == full["labels"][: answer_start + 2]
    kept_part = labelled_text(tokenizer, cut)
    assert kept_part == tokenizer.decode(full["input_ids"][answer_start : answer_start + 2])
    assert kept_part and "Größe 120 m² 🏠".startswith(kept_part)


def test_truncation_that_cuts_every_answer_raises_no_trainable_tokens_truncated(tokenizers):
    tokenizer, messages = tokenizers["llama3"], CONVERSATIONS["multi_turn_with_system"]
    first_answer = turn_starts(encode_conversation(tokenizer, messages))[0]
    with pytest.raises(NoTrainableTokens) as raised:
        encode_conversation(tokenizer, messages, max_length=first_answer)
    assert raised.value.reason == "truncated"
    # With last_turn_only, surviving earlier answers do not count: only the last one is trained.
    last_answer = turn_starts(encode_conversation(tokenizer, messages))[-1]
    with pytest.raises(NoTrainableTokens):
        encode_conversation(tokenizer, messages, max_length=last_answer, turns="last")


# -- many records, cached ------------------------------------------------------------------------------


class CountingTokenizer:
    """Forwards to a tokenizer and counts every tokenization and template rendering."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._tokenizer(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        self.calls += 1
        return self._tokenizer.apply_chat_template(*args, **kwargs)


def shard():
    long_question = {"role": "user", "content": "Tell me everything about Paris. " * 20}
    return [
        CONVERSATIONS["multi_turn_with_system"],
        CONVERSATIONS["non_ascii"],
        [SYSTEM, {"role": "user", "content": "No answer here."}],
        [long_question, {"role": "assistant", "content": "Paris is big."}],
    ]


def test_encode_records_drops_and_counts_conversations_with_nothing_to_train(tokenizers):
    tokenizer = tokenizers["chatml"]
    dataset, stats = encode_records(tokenizer, shard(), max_length=100)
    assert stats == {
        "conversations": 4,
        "kept": 2,
        "cut_truncated": 0,
        "dropped_truncated": 1,
        "dropped_no_assistant": 1,
        "no_end_marker": 0,
        "reasoning_not_rendered": 0,
        "split_fallback": 0,
        "cache_hit": False,
    }
    assert dataset.column_names == ["input_ids", "labels", "length"]
    assert dataset[1]["input_ids"] == encode_conversation(tokenizer, CONVERSATIONS["non_ascii"])["input_ids"]
    for row in dataset:
        assert row["length"] == len(row["input_ids"]) == len(row["labels"]) <= 100
        assert any(label != IGNORE_INDEX for label in row["labels"])


def test_encode_records_second_call_loads_the_cache_without_tokenizing(tokenizers, tmp_path):
    counting = CountingTokenizer(tokenizers["chatml"])
    first, first_stats = encode_records(counting, shard(), max_length=100, cache_dir=tmp_path)
    assert counting.calls > 0 and first_stats["cache_hit"] is False

    counting.calls = 0
    second, second_stats = encode_records(counting, shard(), max_length=100, cache_dir=tmp_path)
    assert counting.calls == 0
    assert second_stats == {**first_stats, "cache_hit": True}
    assert second.to_dict() == first.to_dict()


def test_the_cache_is_missed_when_max_length_last_turn_only_template_or_data_change(
    tokenizers, base_tokenizer, tmp_path
):
    tokenizer = tokenizers["chatml"]
    encode_records(tokenizer, shard(), max_length=100, cache_dir=tmp_path)
    other_template = format_tokenizer(base_tokenizer, "qwen2_5")
    for tokenizer_, data, max_length, turns in [
        (tokenizer, shard(), 200, "all"),
        (tokenizer, shard(), 100, "last"),
        (other_template, shard(), 100, "all"),
        (tokenizer, shard()[:3], 100, "all"),
    ]:
        _, stats = encode_records(tokenizer_, data, max_length, turns, cache_dir=tmp_path)
        assert stats["cache_hit"] is False


def test_examples_cut_before_the_end_of_their_answer_are_kept_and_counted(tokenizers):
    tokenizer = tokenizers["chatml"]
    conversation = CONVERSATIONS["multi_turn_with_system"]
    full = encode_conversation(tokenizer, conversation)
    last_label = max(i for i, label in enumerate(full["labels"]) if label != IGNORE_INDEX)
    cut = encode_conversation(tokenizer, conversation, max_length=last_label)  # the end marker falls off
    assert cut["cut"] and not full["cut"] and len(cut["input_ids"]) == last_label
    assert not encode_conversation(tokenizer, conversation, max_length=last_label + 1)["cut"]
    _, stats = encode_records(tokenizer, [conversation, CONVERSATIONS["non_ascii"]], max_length=last_label)
    assert stats["kept"] == 2 and stats["cut_truncated"] >= 1


# -- end markers the tokenizer does not know as special tokens -------------------------------------------


@pytest.fixture(scope="module")
def plain_tokenizers(base_tokenizer):
    return {name: plain_tokenizer(base_tokenizer, name) for name in FORMATS}


@pytest.mark.parametrize("case", CONVERSATIONS)
@pytest.mark.parametrize("name", FORMATS)
def test_an_end_marker_written_as_plain_text_is_trained_to_its_last_character(plain_tokenizers, name, case):
    tokenizer, messages = plain_tokenizers[name], CONVERSATIONS[case]
    *_, end, trims, lead = FORMATS[name]
    example = encode_conversation(tokenizer, messages)
    assert not example["no_end_marker"]
    answers = [lead + (m["content"].strip() if trims else m["content"]) for m in messages if m["role"] == "assistant"]
    runs = labelled_runs(tokenizer, example)
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers):
        assert run.startswith(answer + end), (run, answer + end)
        # Past the marker only what shares a token with its last character (Llama-3's "<|eot_id|>" and
        # the next header's "<" are one plain token "><"): the template's next text, never a whole token.
        rest = run[len(answer + end) :]
        if rest:
            last = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
            shared = [tokenizer.decode([t]) for t in last if tokenizer.decode([t]).endswith(rest)]
            assert any(end[-1] + rest in token for token in shared), (run, rest)


def test_the_plain_markers_are_really_plain_text_in_these_tests(plain_tokenizers):
    for name in ("llama3", "gemma", "phi3", "mistral"):
        tokenizer, end = plain_tokenizers[name], FORMATS[name][3]
        assert len(tokenizer(end, add_special_tokens=False)["input_ids"]) > 1, name


def test_a_template_that_writes_no_end_marker_trains_the_answers_and_counts_those_examples(base_tokenizer):
    tokenizer = template_tokenizer(base_tokenizer, "no_end_marker")
    messages = CONVERSATIONS["multi_turn_with_system"]
    example = encode_conversation(tokenizer, messages)
    assert example["no_end_marker"]
    assert labelled_runs(tokenizer, example) == [m["content"] for m in messages if m["role"] == "assistant"]
    _, stats = encode_records(tokenizer, [messages, CONVERSATIONS["non_ascii"]])
    assert stats["kept"] == 2 and stats["no_end_marker"] == 2
    _, with_marker = encode_records(format_tokenizer(base_tokenizer, "chatml"), [messages])
    assert with_marker["no_end_marker"] == 0


# -- data.turns and reasoning ---------------------------------------------------------------------------

THOUGHT_1, ANSWER_1 = "Add one and two.", '{"sum": 3}'
THOUGHT_2, ANSWER_2 = "Three and four.", '{"sum": 7}'
REASONING = [
    {"role": "user", "content": "1+2 as JSON?"},
    {"role": "assistant", "content": f"<think>\n{THOUGHT_1}\n</think>\n\n{ANSWER_1}"},
    {"role": "user", "content": "3+4 as JSON?"},
    {"role": "assistant", "content": ANSWER_2, "reasoning_content": THOUGHT_2},
]


@pytest.fixture(scope="module")
def reasoning_tokenizers(base_tokenizer):
    return {name: format_tokenizer(base_tokenizer, name) for name in REASONING_FORMATS}


def qwen3_trained(thought, answer):
    return f"<think>\n{thought}\n</think>\n\n{answer}<|im_end|>"


def test_split_gives_each_answer_its_own_example_cut_right_after_it(tokenizers):
    tokenizer, messages = tokenizers["llama3"], CONVERSATIONS["multi_turn_with_system"]
    examples, fell_back = encode_examples(tokenizer, messages, turns="split")
    assert not fell_back and len(examples) == 2
    first, second = examples
    assert first["input_ids"] == encode_conversation(tokenizer, messages[:3])["input_ids"]
    assert labelled_runs(tokenizer, first) == ["The capital of France is Paris.<|eot_id|>"]
    assert labelled_runs(tokenizer, second) == ["Rome is the capital of Italy.<|eot_id|>"]
    assert second["input_ids"] == encode_conversation(tokenizer, messages, turns="last")["input_ids"]


def test_a_final_answers_reasoning_is_trained_where_qwen3_renders_it_inline_or_as_reasoning_content(
    reasoning_tokenizers,
):
    tokenizer = reasoning_tokenizers["qwen3_style"]
    inline = [REASONING[0], REASONING[1]]
    separate = [REASONING[0], {"role": "assistant", "content": ANSWER_1, "reasoning_content": THOUGHT_1}]
    example = encode_conversation(tokenizer, inline)
    assert example == encode_conversation(tokenizer, separate)
    assert labelled_runs(tokenizer, example) == [qwen3_trained(THOUGHT_1, ANSWER_1)]
    assert not example["reasoning_not_rendered"]


def test_multi_turn_reasoning_that_qwen3_drops_from_earlier_turns_falls_back_to_split_and_is_counted(
    reasoning_tokenizers,
):
    tokenizer = reasoning_tokenizers["qwen3_style"]
    examples, fell_back = encode_examples(tokenizer, REASONING, turns="all")
    assert fell_back
    assert examples == encode_examples(tokenizer, REASONING, turns="split")[0]
    assert [labelled_runs(tokenizer, e) for e in examples] == [
        [qwen3_trained(THOUGHT_1, ANSWER_1)],
        [qwen3_trained(THOUGHT_2, ANSWER_2)],
    ]
    _, stats = encode_records(tokenizer, [REASONING, REASONING[:2], CONVERSATIONS["multi_turn_with_system"]])
    assert stats["conversations"] == 3 and stats["split_fallback"] == 1 and stats["kept"] == 4
    assert stats["reasoning_not_rendered"] == 0


def test_a_template_that_never_renders_reasoning_trains_the_answers_in_one_sequence_and_counts_it(
    reasoning_tokenizers,
):
    tokenizer = reasoning_tokenizers["r1_distill_style"]
    examples, fell_back = encode_examples(tokenizer, REASONING, turns="all")
    assert not fell_back and len(examples) == 1
    end = REASONING_FORMATS["r1_distill_style"][3]
    assert labelled_runs(tokenizer, examples[0]) == [ANSWER_1 + end, ANSWER_2 + end]
    assert examples[0]["reasoning_not_rendered"]
    _, stats = encode_records(tokenizer, [REASONING, CONVERSATIONS["non_ascii"]])
    assert stats["reasoning_not_rendered"] == 1 and stats["split_fallback"] == 0


def test_a_template_that_knows_no_reasoning_trains_an_inline_think_block_as_the_content_it_renders(tokenizers):
    tokenizer = tokenizers["chatml"]
    example = encode_conversation(tokenizer, REASONING)
    runs = labelled_runs(tokenizer, example)
    assert runs == [REASONING[1]["content"] + "<|im_end|>", ANSWER_2 + "<|im_end|>"]
    assert example["reasoning_not_rendered"]  # the second turn's reasoning_content: ChatML writes none


@pytest.mark.parametrize("turns", ["all", "last", "split"])
@pytest.mark.parametrize("name", REASONING_FORMATS)
def test_multi_turn_reasoning_data_trains_under_every_turns_setting(reasoning_tokenizers, name, turns):
    dataset, stats = encode_records(reasoning_tokenizers[name], [REASONING] * 3, turns=turns)
    # Qwen3-style `all` falls back to one example per answer; R1-style renders no reasoning, so keeps one.
    per_conversation = {"last": 1, "split": 2, "all": 2 if name == "qwen3_style" else 1}[turns]
    assert stats["kept"] == len(dataset) == 3 * per_conversation


def test_an_unknown_turns_setting_names_the_knob(tokenizers):
    with pytest.raises(Exception, match="data.turns"):
        encode_records(tokenizers["chatml"], [CONVERSATIONS["non_ascii"]], turns="first")


# -- many conversations, fast -----------------------------------------------------------------------------


def test_the_rust_tokenizer_call_gives_the_ids_and_offsets_of_the_transformers_call(tokenizers, plain_tokenizers):
    from kit.data.tokenize import tokenize_texts

    texts = [tokenizers["llama3"].apply_chat_template(c, tokenize=False) for c in CONVERSATIONS.values()]
    for tokenizer in (tokenizers["llama3"], plain_tokenizers["llama3"]):
        ids, offsets = tokenize_texts(tokenizer, texts)
        expected = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        assert ids == expected["input_ids"]
        assert [list(map(tuple, o)) for o in offsets] == [list(map(tuple, o)) for o in expected["offset_mapping"]]


def test_a_backend_set_to_truncate_is_called_through_transformers_which_does_not(base_tokenizer):
    from kit.data.tokenize import tokenize_texts

    tokenizer = copy.deepcopy(base_tokenizer)
    tokenizer.backend_tokenizer.enable_truncation(max_length=3)  # as a tokenizer.json may ship
    text = "a long enough text to be cut"
    ids, _ = tokenize_texts(tokenizer, [text])
    assert ids == [tokenizer(text, add_special_tokens=False)["input_ids"]] and len(ids[0]) > 3


def test_worker_processes_give_the_same_dataset_and_counts_as_one(tokenizers):
    conversations = shard() * 300 + [REASONING]  # 1201 conversations, 5 chunks
    one, one_stats = encode_records(tokenizers["chatml"], conversations, max_length=100, num_proc=1)
    two, two_stats = encode_records(tokenizers["chatml"], conversations, max_length=100, num_proc=2)
    assert one.to_dict() == two.to_dict() and one_stats == two_stats
    assert one_stats["conversations"] == 1201 and one_stats["dropped_no_assistant"] == 300
