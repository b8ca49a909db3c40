"""One prompt for training, eval and inference: the text a trained answer followed, and how to rebuild it.

    ids = encode_prompt(tokenizer, messages)         # the training tokens before the last answer's labels
    recipe = prompt_recipe(tokenizer, conversations) # {"matches": bool, "recipe": sentence, ...}

Eval generates from exactly the tokens that preceded the labelled last answer in training, so eval
loss, the JSON validity rate and the merges that pick by them score what training taught. A template's
own generation prompt (`add_generation_prompt=True`) is not always that text: Qwen3's stops before the
empty `<think>\\n\\n</think>\\n\\n` its rendered answers open with, DeepSeek-R1's opens a `<think>` block
its rendered answers never have. `prompt_recipe` says so in one sentence, which the run log prints once
and the shard's and the merge's model cards carry as the inference recipe.

Tests: .venv/bin/python -m pytest tests/data/test_prompts.py
"""

from __future__ import annotations

import os

from kit.data.template import chat_template, prepared_messages, render
from kit.data.tokenize import IGNORE_INDEX, label_tokens, plan_examples, tokenize_texts
from kit.errors import DataError


def _cut_before_last_answer(messages) -> list[dict]:
    """The conversation up to and including its last assistant turn; one with no assistant turn gets a
    stand-in answer, whose prompt is then the whole conversation's."""
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if turns:
        if turns[-1] == 0:
            raise DataError("the conversation opens with its assistant message: there is no prompt to give the model")
        return list(messages[: turns[-1] + 1])
    if not messages:
        raise DataError("the conversation is empty: there is no prompt to give the model")
    return [*messages, {"role": "assistant", "content": "answer"}]


def trained_prompt(tokenizer, messages) -> tuple[list[int], str]:
    """(token ids, text) the last assistant answer of `messages` followed in training."""
    cut = _cut_before_last_answer(messages)
    (plan,), _ = plan_examples(tokenizer, cut, turns="last", fallback=False)
    (ids,), (offsets,) = tokenize_texts(tokenizer, [plan.text])
    labels = label_tokens(plan.text, ids, offsets, plan.spans)
    # The first trained token may begin before the answer's text (Mistral's " answer" holds the
    # template's space); the prompt then ends before it, as training's did.
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    return list(ids[:first]), plan.text[: offsets[first][0]]


def encode_prompt(tokenizer, messages) -> list[int]:
    """Token ids a model is given at eval time to generate the conversation's last answer: exactly the
    training tokens before that answer's labels (a conversation with no assistant turn is all prompt)."""
    chat_template(tokenizer)
    return trained_prompt(tokenizer, messages)[0]


def prompt_recipe(tokenizer, conversations, limit: int = 20) -> dict:
    """How to prompt the trained adapter, compared with the template's own generation prompt on up to
    `limit` conversations: {"matches", "recipe" (one sentence), "checked", "differing"}."""
    checked, differing, first = 0, 0, None
    for messages in conversations:
        if checked == limit:
            break
        cut = prepared_messages(tokenizer, _cut_before_last_answer(messages))  # as training handed them over
        trained = trained_prompt(tokenizer, cut)[1]
        generation = render(tokenizer, cut[:-1], add_generation_prompt=True)
        checked += 1
        if generation != trained:
            differing += 1
            if first is None:
                first = (cut, trained, generation)
    if first is None:
        return {
            "matches": True,
            "checked": checked,
            "differing": 0,
            "recipe": "prompt with the chat template's own generation prompt "
            "(`tokenizer.apply_chat_template(messages, add_generation_prompt=True)`): it is the text the "
            "adapter's answers followed in training.",
        }
    cut, trained, generation = first
    recipe = _difference(tokenizer, cut, trained, generation)
    if differing < checked:
        recipe += f" (this holds for {differing} of {checked} eval conversations checked)"
    return {"matches": False, "checked": checked, "differing": differing, "recipe": recipe}


def _difference(tokenizer, cut, trained: str, generation: str) -> str:
    common = len(os.path.commonprefix([trained, generation]))
    added, extra = trained[common:], generation[common:]
    try:
        no_thinking = render(tokenizer, cut[:-1], add_generation_prompt=True, enable_thinking=False) == trained
    except Exception:  # a template that refuses the flag: then it is no remedy
        no_thinking = False
    switch = "generate with `enable_thinking=False` in `apply_chat_template`, or " if no_thinking else ""
    if not extra:
        return (
            f"this template's generation prompt stops before {added!r}, which training wrote before every "
            f"answer, so the adapter answers after it: {switch}append {added!r} to the generation prompt."
        )
    opens = " (it opens a think block)" if "<think>" in extra else ""
    if not added:
        return (
            f"this template's generation prompt ends with {extra!r}{opens}; the adapter was trained without it: "
            f"{switch}drop the trailing {extra!r} from the generation prompt."
        )
    return (
        f"this template's generation prompt ends with {extra!r}{opens} where training wrote {added!r}: "
        f"{switch}end the prompt with {added!r} instead."
    )
