"""Reading a chat template: where each assistant answer lies in its rendering, and what closes it.

Owns the text side of assistant-only labelling, with no token ids:

    facts = template_facts(tokenizer)   # per template, probed once: the end-of-turn text, think-block handling
    reading = read_conversation(tokenizer, messages)
    reading.text                        # the conversation as the template renders it
    reading.answers[k].start/.end       # character span of assistant turn k (its reasoning, when rendered,
                                        # then its content), .closing_end the end of its end-of-turn text

The end-of-turn text is found by what the template writes, not by which tokens the tokenizer calls
special: a base model given a ChatML or Llama-3 template without adding `<|im_end|>` or `<|eot_id|>` as
special tokens still gets its marker trained, as several plain tokens. Reasoning the data carries
(`reasoning_content`, or a `<think>...</think>` block in the content) is handed to the template the way
reasoning templates (Qwen3, DeepSeek-R1) read it, and trained where the template renders it.

kit/data/tokenize.py turns a reading into token ids and labels. Tests:
    .venv/bin/python -m pytest tests/data/test_template.py tests/data/test_tokenize.py
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field

import jinja2

from kit.errors import ChatTemplateError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Random per process, so no real text contains a placeholder; fixed within it, so one compiled pattern
# serves every conversation.
_NONCE = secrets.token_hex(6)
_PLACEHOLDER = re.compile(rf"@kit{_NONCE}([cr])(\d+)@")


def placeholder(kind: str, index: int) -> str:
    """`kind` c: an assistant content, r: its reasoning."""
    return f"@kit{_NONCE}{kind}{index}@"


# --------------------------------------------------------------------------------------------------
# The template, probed once
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TemplateFacts:
    closing: str
    """Text the template writes right after an assistant content to close the turn ("<|im_end|>",
    "<|eot_id|>", " </s>"), without the layout whitespace after it; "" when it writes none."""
    parses_think: bool
    """It reads a `<think>...</think>` block out of an assistant content itself (Qwen3, DeepSeek-R1):
    kit then hands such a block over as `reasoning_content`."""
    renders_final_reasoning: bool
    """It renders `reasoning_content` of a conversation's final answer (Qwen3 does, R1 and ChatML do not)."""


_FACTS: dict[tuple, TemplateFacts] = {}


def chat_template(tokenizer) -> str:
    try:
        template = tokenizer.get_chat_template()
    except ValueError:
        template = None
    if not template:
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(
            f"tokenizer {name!r} has no chat template, so kit cannot tell the assistant's tokens apart. "
            "Fix: use an instruct/chat model's tokenizer, or set `tokenizer.chat_template` to a Jinja "
            "template (for example the one of the model family you fine-tune)."
        )
    return template


def template_facts(tokenizer) -> TemplateFacts:
    """What this template writes around answers, probed with placeholder conversations (cached per template)."""
    template = chat_template(tokenizer)
    key = (template, str(tokenizer.bos_token), str(tokenizer.eos_token))
    if key not in _FACTS:
        _FACTS[key] = TemplateFacts(
            closing=_probe_closing(tokenizer),
            parses_think=_probe_parses_think(tokenizer),
            renders_final_reasoning=_probe_renders_reasoning(tokenizer),
        )
    return _FACTS[key]


def _probe_closing(tokenizer) -> str:
    """The end-of-turn text: what follows an answer both when the conversation ends there and when a user
    turn follows (the layout and the next header differ, the closing text does not)."""
    user = lambda i: {"role": "user", "content": placeholder("u", i)}  # noqa: E731
    answer = lambda i: {"role": "assistant", "content": placeholder("c", i)}  # noqa: E731
    for opening in ([], [{"role": "system", "content": placeholder("s", 0)}]):  # some templates want a system turn
        try:
            skeleton = render(tokenizer, [*opening, user(0), answer(0), user(1), answer(1)])
        except ChatTemplateError:
            continue
        first, last = placeholder("c", 0), placeholder("c", 1)
        if first in skeleton and last in skeleton:
            middle = skeleton[skeleton.index(first) + len(first) :]
            final = skeleton[skeleton.index(last) + len(last) :]
            return closing_text(middle, final)
    try:  # a template that accepts one turn only: what ends it, without trailing layout
        skeleton = render(tokenizer, [user(0), answer(0)])
    except ChatTemplateError:
        return ""
    return skeleton.split(placeholder("c", 0))[-1].rstrip() if placeholder("c", 0) in skeleton else ""


def closing_text(middle: str, final: str) -> str:
    """The text two continuations of an answer share, cut back to where a marker ends.

    Phi-3 writes "<|end|>\\n<|user|>" mid-conversation and "<|end|>\\n<|endoftext|>" at the end: they
    share "<|end|>\\n<|", whose "<|" begins two different markers. Where the two part inside the text,
    the shared text is cut back to its last whitespace or the end of a bracketed marker (">", "]")."""
    common = os.path.commonprefix([middle, final])
    if common not in (middle, final):
        cut = max(
            max((common.rfind(c) for c in " \t\r\n"), default=-1),
            max(common.rfind(">"), common.rfind("]")) + 1 if (">" in common or "]" in common) else -1,
        )
        common = common[: max(cut, 0)]
    return common.rstrip()


def _probe_parses_think(tokenizer) -> bool:
    content = (
        f"{THINK_OPEN}{placeholder('r', 0)}{THINK_CLOSE}{placeholder('c', 0)}"  # no newlines: as no template writes it
    )
    try:
        text = render(tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": content}])
    except ChatTemplateError:
        return False
    return content not in text


def _probe_renders_reasoning(tokenizer) -> bool:
    answer = {"role": "assistant", "content": placeholder("c", 0), "reasoning_content": placeholder("r", 0)}
    try:
        text = render(tokenizer, [{"role": "user", "content": "q"}, answer])
    except ChatTemplateError:
        return False
    return placeholder("r", 0) in text


def render(tokenizer, messages, **kwargs) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except jinja2.TemplateError as error:
        # raise_exception() in a template (roles that do not alternate, an unsupported system role, ...)
        raise ChatTemplateError(
            f"the chat template refused this conversation: {error}. Fix: shape the conversation the way "
            "this template expects (roles, order), or use a template that accepts it."
        ) from error


# --------------------------------------------------------------------------------------------------
# One conversation
# --------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """Where one assistant turn lies in the rendered text."""

    start: int  # its reasoning's start when the template rendered it, else its content's
    content_start: int
    end: int  # the content's end
    closing_end: int  # end of the end-of-turn text after it; == end when none was written
    had_reasoning: bool  # the data carried reasoning for this turn
    reasoning_rendered: bool


@dataclass
class Reading:
    text: str
    answers: list[Answer] = field(default_factory=list)


def split_think(content: str) -> tuple[str, str] | None:
    """(reasoning, answer) of a content that holds a `<think>...</think>` block, else None."""
    if THINK_CLOSE not in content:
        return None
    # The reasoning unstripped (a template strips it as it likes); the answer without the blank line
    # that separates it from the block, as Qwen3 renders it.
    before, _, after = content.rpartition(THINK_CLOSE)
    return before.split(THINK_OPEN, 1)[-1], after.lstrip("\n")


def prepared_messages(tokenizer, messages) -> list[dict]:
    """The conversation as the template should be given it: for a template that reads think blocks
    itself, a `<think>` block in an assistant content becomes that message's `reasoning_content`, so
    that content and reasoning can each be located."""
    facts = template_facts(tokenizer)
    out = []
    for index, message in enumerate(messages):
        if message.get("role") == "assistant":
            content = message.get("content")
            if not isinstance(content, str):
                raise ChatTemplateError(
                    f"message {index} (assistant): content must be a string to be trained on, "
                    f"got {type(content).__name__}"
                )
            reasoning = message.get("reasoning_content")
            if reasoning is not None and not isinstance(reasoning, str):
                raise ChatTemplateError(
                    f"message {index} (assistant): reasoning_content must be a string, got {type(reasoning).__name__}"
                )
            parts = split_think(content) if facts.parses_think and reasoning is None else None
            if parts is not None:
                message = {**message, "reasoning_content": parts[0], "content": parts[1]}
        out.append(message)
    return out


def read_conversation(tokenizer, messages) -> Reading:
    """Render `messages` (as prepared_messages gives them) and locate every assistant answer in the text.

    Why placeholders rather than searching for the content: the conversation is rendered a second time
    with each assistant content (and reasoning) replaced by a unique placeholder. The template's own text
    between the placeholders (headers, end markers, the other roles' messages) must then appear verbatim in
    the real rendering, in order, with each content (as is, or stripped when the template trims) in the
    gaps. That parse is exact: an answer that repeats words of the question cannot be matched inside the
    question, and it does not assume that rendering the first k messages is a prefix of rendering all of
    them (Mistral folds the system prompt into the last user turn). A content the template changes or
    branches on leaves no span trustworthy: ChatTemplateError.
    """
    facts = template_facts(tokenizer)
    values, skeleton_messages, had_reasoning = {}, [], []
    for message in messages:
        if message.get("role") == "assistant":
            k = len(had_reasoning)
            values[placeholder("c", k)] = message["content"]
            message = {**message, "content": placeholder("c", k)}
            reasoning = message.get("reasoning_content")
            had_reasoning.append(bool(reasoning))
            if reasoning:
                values[placeholder("r", k)] = reasoning
                message["reasoning_content"] = placeholder("r", k)
            else:
                message.pop("reasoning_content", None)  # an empty one: nothing to place
        skeleton_messages.append(message)

    real_messages = [
        {k: v for k, v in m.items() if not (k == "reasoning_content" and not v)} if m.get("role") == "assistant" else m
        for m in messages
    ]
    text = render(tokenizer, real_messages)
    skeleton = render(tokenizer, skeleton_messages)
    pieces = _PLACEHOLDER.split(skeleton)  # [literal, kind, index, literal, kind, index, ..., literal]
    literals, found = pieces[0::3], list(zip(pieces[1::3], map(int, pieces[2::3])))
    contents = [k for kind, k in found if kind == "c"]
    if contents != list(range(len(had_reasoning))):
        raise ChatTemplateError(
            "the chat template does not render each assistant message's content exactly once and in order "
            f"(rendered {len(contents)} of {len(had_reasoning)}), so the assistant's tokens cannot be "
            "located. Fix: use a template that writes every assistant message's content unchanged."
        )

    spans: dict[tuple[str, int], tuple[int, int]] = {}
    position = 0
    for n, (kind, k) in enumerate(found):
        if not text.startswith(literals[n], position):
            raise _altered_content_error(k, values[placeholder("c", k)], text)
        position += len(literals[n])
        value, following, is_last = values[placeholder(kind, k)], literals[n + 1], n == len(found) - 1
        forms = (value, value.strip(), value.lstrip(), value.rstrip(), value.strip("\n"))
        for form in dict.fromkeys(forms):
            end = position + len(form)
            if text.startswith(form, position) and (
                text[end:] == following if is_last else text.startswith(following, end)
            ):
                spans[(kind, k)] = (position, end)
                position = end
                break
        else:
            raise _altered_content_error(k, values[placeholder("c", k)], text)

    reading = Reading(text)
    for k, carried in enumerate(had_reasoning):
        content_start, end = spans[("c", k)]
        reasoning = spans.get(("r", k))
        start = content_start
        if reasoning and reasoning[0] < content_start:
            # The think block's opening tag is the answer's first text: a model prompted with the
            # template's generation prompt (thinking on) writes it itself.
            opening = text[: reasoning[0]].rstrip()
            start = len(opening) - len(THINK_OPEN) if opening.endswith(THINK_OPEN) else reasoning[0]
        closing_end = end + len(facts.closing) if facts.closing and text.startswith(facts.closing, end) else end
        reading.answers.append(Answer(start, content_start, end, closing_end, carried, reasoning is not None))
    return reading


def _altered_content_error(k: int, content: str, text: str) -> ChatTemplateError:
    return ChatTemplateError(
        f"assistant message #{k + 1} ({content[:60]!r}) does not appear in the rendered conversation as "
        "written (nor stripped of surrounding whitespace): the chat template changes assistant content "
        "or branches on it, so kit cannot tell which tokens to train. "
        f"Rendered text begins: {text[:200]!r}. Fix: use a template that writes assistant content "
        "unchanged (trimming is fine), or clean the content the way the template expects first."
    )
