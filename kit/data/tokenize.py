"""Chat template -> `input_ids` + `labels` that train only the assistant, and the tokenized-data cache.

Owns: turning a conversation (a list of {"role", "content"} dicts) into token ids and labels with the
tokenizer's own chat template, whatever that template is (ChatML, Qwen2.5, Llama-3, Mistral, Gemma,
Phi-3, Zephyr, templates that trim, templates with `{% generation %}` blocks); the eval-time prompt of a
conversation; encoding a whole shard into a `datasets.Dataset`, cached as Arrow.

Labelled (everything else is IGNORE_INDEX): every token of every assistant message's content, plus the
template's end-of-turn token that closes it (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`,
`<|end|>`, ...), not the newline after it.

Tests (no network, ~10 s):
    .venv/bin/python -m pytest tests/data/test_tokenize.py
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from pathlib import Path

import jinja2

from kit.errors import ChatTemplateError, DataError
from kit.files import folder_written_whole

IGNORE_INDEX = -100

# Bump when the labelling rules change, so that no cache written by older code is ever loaded.
CACHE_FORMAT = 2  # 2: stats count cut_truncated

_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


class NoTrainableTokens(DataError):
    """The conversation yields no labelled token. `reason` is "no_assistant" or "truncated"."""

    def __init__(self, reason: str, message: str | None = None):
        self.reason = reason
        super().__init__(message or reason)


# --------------------------------------------------------------------------------------------------
# One conversation
# --------------------------------------------------------------------------------------------------


def encode_conversation(tokenizer, messages, max_length=None, last_turn_only=False) -> dict:
    """-> {"input_ids": list[int], "labels": list[int]} (same length; labels IGNORE_INDEX where not trained).

    `last_turn_only` trains only the last assistant message. The start is kept and the end cut when
    `max_length` is given; raises NoTrainableTokens when nothing is left to train ("no_assistant" or
    "truncated"): an all-IGNORE_INDEX example is never returned.
    """
    template = _chat_template(tokenizer)
    assistant_turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not assistant_turns:
        raise NoTrainableTokens("no_assistant", "the conversation has no assistant message to train on")
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens, got {max_length}")

    text, spans = _locate_assistant_content(tokenizer, messages)
    encoding = _tokenize_with_offsets(tokenizer, text)
    input_ids = list(encoding["input_ids"])
    offsets = list(encoding["offset_mapping"])
    control_ids = _control_token_ids(tokenizer)
    # One mask per assistant turn, so last_turn_only is just "keep the last mask".
    turn_masks = [_turn_mask(text, input_ids, offsets, span, control_ids) for span in spans]

    if _GENERATION_BLOCK.search(template):
        _check_generation_blocks_agree(tokenizer, messages, input_ids, offsets, spans, turn_masks)

    trained = turn_masks[-1:] if last_turn_only else turn_masks
    labels = [token if any(mask[i] for mask in trained) else IGNORE_INDEX for i, token in enumerate(input_ids)]
    cut = False
    if max_length is not None:
        # Keep the start: the system prompt and the question are what the answer is conditioned on.
        cut = any(label != IGNORE_INDEX for label in labels[max_length:])  # trained tokens lost: an answer cut short
        input_ids, labels = input_ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise NoTrainableTokens(
                "truncated",
                f"every assistant token lies beyond max_length={max_length} "
                f"(the conversation has {len(encoding['input_ids'])} tokens)",
            )
    return {"input_ids": input_ids, "labels": labels, "cut": cut}


def encode_prompt(tokenizer, messages) -> list[int]:
    """Token ids of the conversation up to (not including) its last assistant message, with the generation
    prompt added — what a model is given at eval time to generate that last answer.

    A conversation with no assistant message is all prompt.
    """
    _chat_template(tokenizer)
    assistant_turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    prompt_messages = list(messages[: assistant_turns[-1]] if assistant_turns else messages)
    if not prompt_messages:
        raise DataError("the conversation opens with its assistant message: there is no prompt to give the model")
    # Tokenized on its own, as a server tokenizes a prompt (the template's text, no extra special
    # tokens): the same text the model saw before its answer in training. The last ids may still differ
    # from the training ids where a pre-tokenizer splits trailing whitespace differently at the end of a
    # text (SmolLM2 ends a prompt with one "\n\n" token but splits "\n\nRome" as "\n", "\n", "Rome").
    text = _render(tokenizer, prompt_messages, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _chat_template(tokenizer) -> str:
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


def _render(tokenizer, messages, **kwargs) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except jinja2.TemplateError as error:
        # raise_exception() in a template (roles that do not alternate, an unsupported system role, ...)
        raise ChatTemplateError(
            f"the chat template refused this conversation: {error}. Fix: shape the conversation the way "
            "this template expects (roles, order), or use a template that accepts it."
        ) from error


def _locate_assistant_content(tokenizer, messages) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation; return the text and the (start, end) character span of each assistant
    message's content as the template rendered it.

    Why placeholders rather than searching for the content: the conversation is rendered a second time
    with each assistant content replaced by a unique placeholder. The template's own text between the
    placeholders (headers, end markers, the other roles' messages) must then appear verbatim in the real
    rendering, in order, with each assistant content (as is, or stripped when the template trims) in the
    gaps. That parse is exact: an answer that repeats words of the question cannot be matched inside the
    question, and it does not assume that rendering the first k messages is a prefix of rendering all of
    them (Mistral folds the system prompt into the last user turn; Phi-3 appends an eos only when no
    generation prompt is asked for). Any mismatch means the template changes assistant content or
    branches on it, and then no span is trustworthy: ChatTemplateError.
    """
    nonce = secrets.token_hex(6)  # random, so no real text can contain a placeholder
    placeholders, contents, placeholder_messages = [], [], []
    for index, message in enumerate(messages):
        if message.get("role") == "assistant":
            content = message.get("content")
            if not isinstance(content, str):
                raise ChatTemplateError(
                    f"message {index} (assistant): content must be a string to be trained on, "
                    f"got {type(content).__name__}"
                )
            placeholder = f"@kit{nonce}x{len(placeholders)}@"
            placeholders.append(placeholder)
            contents.append(content)
            message = {**message, "content": placeholder}
        placeholder_messages.append(message)

    text = _render(tokenizer, messages)
    skeleton = _render(tokenizer, placeholder_messages)
    # re.split with a capture group returns [literal, placeholder, literal, placeholder, ..., literal].
    pieces = re.split("(" + "|".join(re.escape(p) for p in placeholders) + ")", skeleton)
    if pieces[1::2] != placeholders:
        raise ChatTemplateError(
            "the chat template does not render each assistant message's content exactly once and in order "
            f"(rendered {len(pieces[1::2])} of {len(placeholders)}), so the assistant's tokens cannot be "
            "located. Fix: use a template that writes every assistant message's content unchanged."
        )
    literals = pieces[0::2]

    spans, position = [], 0
    for k, content in enumerate(contents):
        if not text.startswith(literals[k], position):
            raise _altered_content_error(k, content, text)
        position += len(literals[k])
        following = literals[k + 1]
        is_last = k == len(contents) - 1
        # Unaltered first; then the forms a template that trims (Llama-3, Gemma, Mistral) writes.
        for form in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            end = position + len(form)
            if text.startswith(form, position) and (
                text[end:] == following if is_last else text.startswith(following, end)
            ):
                spans.append((position, end))
                position = end
                break
        else:
            raise _altered_content_error(k, content, text)
    return text, spans


def _altered_content_error(k: int, content: str, text: str) -> ChatTemplateError:
    return ChatTemplateError(
        f"assistant message #{k + 1} ({content[:60]!r}) does not appear in the rendered conversation as "
        "written (nor stripped of surrounding whitespace): the chat template changes assistant content "
        "or branches on it, so kit cannot tell which tokens to train. "
        f"Rendered text begins: {text[:200]!r}. Fix: use a template that writes assistant content "
        "unchanged (trimming is fine), or clean the content the way the template expects first."
    )


def _tokenize_with_offsets(tokenizer, text: str):
    try:
        # The template writes bos/eos itself; add_special_tokens=False is also what apply_chat_template does.
        return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as error:
        raise ChatTemplateError(
            "kit needs a fast tokenizer (character offsets) to label assistant tokens; "
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        ) from error


def _control_token_ids(tokenizer) -> set[int]:
    """Ids of special tokens: the template's markers (<|im_end|>, <|eot_id|>, </s>, ...)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if getattr(token, "special", False))
    return ids


def _turn_mask(text, input_ids, offsets, span, control_ids) -> list[bool]:
    """Which tokens one assistant turn trains: its content and the end-of-turn token that closes it."""
    start, end = span
    mask = [False] * len(input_ids)
    after = None  # index of the first token after the content
    for i, (token_start, token_end) in enumerate(offsets):
        if token_start >= end:
            after = i
            break
        if token_end <= start:
            continue
        # A token that straddles the content's edge is trained only if the content part of it is more
        # than whitespace. " hi" after Mistral's "[/INST]" must be trained (the prompt ends at "[/INST]",
        # so the model has to produce the space too); "\n " made of ChatML's header newline and the
        # answer's leading space must not (the newline belongs to the generation prompt).
        inside = text[max(token_start, start) : min(token_end, end)]
        if (start <= token_start and token_end <= end) or inside.strip():
            mask[i] = True
    # The end-of-turn marker: the first control token after the content, if only whitespace lies between
    # (Llama-2 writes "answer </s>"). Generating it is how the model learns to stop; the newline the
    # template writes after it belongs to the template's layout, not to the answer.
    if after is not None:
        between = []
        for i in range(after, len(input_ids)):
            if input_ids[i] in control_ids:
                for j in between + [i]:
                    mask[j] = True
                break
            token_start, token_end = offsets[i]
            if text[token_start:token_end].strip():
                break  # template text that is not an end marker: this template closes turns without one
            between.append(i)
    return mask


def _check_generation_blocks_agree(tokenizer, messages, input_ids, offsets, spans, turn_masks) -> None:
    """A template with `{% generation %}` blocks states itself what the model generates; the tokenizer
    turns those blocks into an assistant mask. Use it as a second opinion: if it disagrees with the
    located content + end marker, one of the two is wrong and training on either would be a silent bug."""
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    theirs = [bool(x) for x in out["assistant_masks"]]
    ours = [any(mask[i] for mask in turn_masks) for i in range(len(input_ids))]
    # The tokenizer marks every token that touches a block; a token straddling the start of an answer
    # is decided by _turn_mask's whitespace rule instead, so only those may differ.
    straddling = {i for i, (a, b) in enumerate(offsets) for start, _ in spans if a < start < b}
    differ = [i for i in range(len(input_ids)) if theirs[i] != ours[i] and i not in straddling]
    if list(out["input_ids"]) != input_ids or differ:
        only_theirs = [input_ids[i] for i in differ if theirs[i]]
        only_ours = [input_ids[i] for i in differ if ours[i]]
        raise ChatTemplateError(
            "the chat template's {% generation %} blocks disagree with the assistant content it renders: "
            f"marked only by the template: {tokenizer.decode(only_theirs)!r}; located only by kit: "
            f"{tokenizer.decode(only_ours)!r}. Fix: make each {{% generation %}} block wrap exactly the "
            "assistant content and the end-of-turn token after it (not the role header, not the newline)."
        )


# --------------------------------------------------------------------------------------------------
# Many conversations, cached
# --------------------------------------------------------------------------------------------------


def encode_records(tokenizer, conversations, max_length=None, last_turn_only=False, cache_dir=None):
    """Encode many conversations (each a list of {"role","content"} dicts).

    Returns (dataset, stats): a datasets.Dataset with columns input_ids, labels, length, and
    {"kept", "cut_truncated", "dropped_truncated", "dropped_no_assistant", "cache_hit"}; cut_truncated
    counts kept examples whose answer max_length cut short. Conversations with nothing to
    train are dropped and counted, never kept as all-IGNORE_INDEX rows. With `cache_dir`, the result is
    saved as Arrow under a key of (tokenizer name + vocab hash, chat template, max_length,
    last_turn_only, data hash); the same call again loads it without tokenizing anything.
    """
    import datasets  # here, not at import time: encode_conversation alone does not need it

    conversations = list(conversations)
    cache_path = None
    if cache_dir is not None:
        key = _cache_key(tokenizer, conversations, max_length, last_turn_only)
        cache_path = Path(cache_dir) / f"tokenized-{key}"
        if (cache_path / "kit_stats.json").exists():
            stats = json.loads((cache_path / "kit_stats.json").read_text())
            return datasets.load_from_disk(str(cache_path)), {**stats, "cache_hit": True}

    columns = {"input_ids": [], "labels": [], "length": []}
    stats = {"kept": 0, "cut_truncated": 0, "dropped_truncated": 0, "dropped_no_assistant": 0}
    for messages in conversations:
        try:
            example = encode_conversation(tokenizer, messages, max_length, last_turn_only)
        except NoTrainableTokens as dropped:
            stats[f"dropped_{dropped.reason}"] += 1
            continue
        columns["input_ids"].append(example["input_ids"])
        columns["labels"].append(example["labels"])
        columns["length"].append(len(example["input_ids"]))
        stats["kept"] += 1
        stats["cut_truncated"] += example["cut"]  # kept, but an answer (or its end marker) lost its end

    features = datasets.Features(
        {
            "input_ids": datasets.List(datasets.Value("int32")),
            "labels": datasets.List(datasets.Value("int32")),
            "length": datasets.Value("int32"),
        }
    )
    dataset = datasets.Dataset.from_dict(columns, features=features)
    if cache_path is not None:
        _save_cache(dataset, stats, cache_path)
    return dataset, {**stats, "cache_hit": False}


def _cache_key(tokenizer, conversations, max_length, last_turn_only) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    # Which tokens are special decides which end-of-turn token is labelled, so it is part of the identity.
    identity = {
        "format": CACHE_FORMAT,
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "vocab": hashlib.sha256(vocab.encode()).hexdigest(),
        "control_ids": sorted(_control_token_ids(tokenizer)),
        "chat_template": _chat_template(tokenizer),
        "max_length": max_length,
        "last_turn_only": bool(last_turn_only),
        "data": hashlib.sha256(
            json.dumps(conversations, sort_keys=True, ensure_ascii=False, default=str).encode()
        ).hexdigest(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def _save_cache(dataset, stats, cache_path: Path) -> None:
    # Whole or not at all: a killed run never leaves a half-written cache that looks complete, and
    # when another process finished the same cache first, its (identical) copy is kept.
    with folder_written_whole(cache_path, replace=False) as tmp:
        dataset.save_to_disk(str(tmp))
        (tmp / "kit_stats.json").write_text(json.dumps(stats))
