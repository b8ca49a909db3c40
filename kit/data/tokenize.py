"""Conversations -> `input_ids` + `labels` that train only the assistant, and the tokenized-data cache.

Owns turning a conversation (a list of {"role", "content"} dicts, an assistant turn optionally with
`reasoning_content`) into training examples with the tokenizer's own chat template, whatever that
template is (ChatML, Qwen2.5/Qwen3, Llama-3, Mistral, Gemma, Phi-3, Zephyr, DeepSeek-R1, templates that
trim, templates with `{% generation %}` blocks); and encoding a whole shard into a `datasets.Dataset`,
on every core, cached as Arrow.

Labelled (everything else is IGNORE_INDEX): each trained assistant turn's content (with its reasoning
where the template renders it) and the end-of-turn text the template writes after it (`<|im_end|>`,
`<|eot_id|>`, `</s>`, `<end_of_turn>`, ..., one special token or several plain ones), not the layout
newline after that. Which turns are trained is `turns` (the config's data.turns):

    all    every assistant turn, in one sequence; a conversation whose earlier answers the template
           rewrites (Qwen3 drops their reasoning) falls back to `split`, counted in the stats
    last   only the last assistant turn
    split  one example per assistant turn, the conversation cut right after it

Tests (no network, ~20 s):
    .venv/bin/python -m pytest tests/data/test_tokenize.py tests/data/test_template.py
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path

from kit.config import TURNS
from kit.data.template import Reading, chat_template, prepared_messages, read_conversation, template_facts
from kit.errors import ChatTemplateError, DataError
from kit.files import folder_written_whole

IGNORE_INDEX = -100

# Bump when the labelling rules change, so that no cache written by older code is ever loaded.
CACHE_FORMAT = 3  # 3: end markers by the template's text, reasoning, data.turns

STAT_KEYS = (
    "conversations",  # conversations read (an example per trained turn under `split`)
    "kept",  # examples kept
    "cut_truncated",  # kept, but max_length cut an answer (or its end marker) short
    "dropped_truncated",  # every trained token lay beyond max_length
    "dropped_no_assistant",
    "no_end_marker",  # kept, with a trained turn after which the template writes no end-of-turn text
    "reasoning_not_rendered",  # kept, with reasoning in the data that the template does not render
    "split_fallback",  # conversations `all` trained as `split`: the template rewrites their earlier answers
)

_GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


class NoTrainableTokens(DataError):
    """The conversation yields no labelled token. `reason` is "no_assistant" or "truncated"."""

    def __init__(self, reason: str, message: str | None = None):
        self.reason = reason
        super().__init__(message or reason)


# --------------------------------------------------------------------------------------------------
# One conversation: which text is trained (no tokens yet)
# --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """One example before tokenization: its text and the character spans to train."""

    text: str
    spans: list[tuple[int, int, int]]  # per trained turn: (start, content end, end-of-turn text end)
    no_end_marker: bool
    reasoning_not_rendered: bool


def _plan(reading: Reading, last_only: bool) -> Plan:
    answers = reading.answers[-1:] if last_only else reading.answers
    return Plan(
        reading.text,
        [(a.start, a.end, a.closing_end) for a in answers],
        no_end_marker=any(a.closing_end == a.end for a in answers),
        reasoning_not_rendered=any(a.had_reasoning and not a.reasoning_rendered for a in answers),
    )


def _assistant_turns(messages) -> list[int]:
    turns = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if not turns:
        raise NoTrainableTokens("no_assistant", "the conversation has no assistant message to train on")
    return turns


def plan_examples(tokenizer, messages, turns: str = "all", fallback: bool = True) -> tuple[list[Plan], bool]:
    """-> (plans, fell_back): the examples one conversation gives under `turns`; fell_back when `all`
    trained it as `split` because the template rewrites its earlier answers (never, with fallback=False:
    the rewrite then raises ChatTemplateError, as it is)."""
    _check_turns(turns)
    indices = _assistant_turns(messages)
    prepared = prepared_messages(tokenizer, messages)
    split = lambda: [_plan(read_conversation(tokenizer, prepared[: i + 1]), last_only=True) for i in indices]  # noqa: E731
    if turns == "split":
        return split(), False
    try:
        reading = read_conversation(tokenizer, prepared)
    except ChatTemplateError:
        if turns == "last" or len(indices) < 2 or not fallback:
            raise
        try:
            return split(), True  # earlier answers rendered otherwise than as a final answer
        except ChatTemplateError:
            pass
        raise  # not a rewrite of earlier turns only: the first error is the one to show
    if turns == "all" and fallback and template_facts(tokenizer).renders_final_reasoning:
        # Reasoning the template renders in a final answer but dropped from an earlier one (Qwen3): trained
        # in one sequence, those answers would teach answering without it.
        if any(a.had_reasoning and not a.reasoning_rendered for a in reading.answers[:-1]):
            return split(), True
    return [_plan(reading, last_only=turns == "last")], False


# --------------------------------------------------------------------------------------------------
# Text -> tokens -> labels
# --------------------------------------------------------------------------------------------------


def tokenize_texts(tokenizer, texts: list[str]):
    """-> (ids per text, character offsets per text). The template writes bos/eos itself, so no special
    tokens are added (as apply_chat_template does)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    # Only when the backend neither truncates nor pads on its own (a tokenizer.json may ask it to; the
    # transformers call switches that off first).
    if backend is not None and backend.truncation is None and backend.padding is None:
        # The Rust tokenizer itself: the same ids and offsets as tokenizer(texts, ...), without
        # transformers converting every encoding into a dict of lists (a third of the time at 100k).
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        return [e.ids for e in encodings], [e.offsets for e in encodings]
    try:
        encoding = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as error:
        raise ChatTemplateError(
            "kit needs a fast tokenizer (character offsets) to label assistant tokens; "
            "load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        ) from error
    return encoding["input_ids"], encoding["offset_mapping"]


def label_tokens(text: str, input_ids, offsets, spans) -> list[int]:
    labels = [IGNORE_INDEX] * len(input_ids)
    ends = [end for _, end in offsets]
    for start, end, closing_end in spans:
        i = bisect_right(ends, start)  # the first token that ends after the answer starts
        while i < len(input_ids) and offsets[i][0] < closing_end:
            token_start, token_end = offsets[i]
            inside = text[max(token_start, start) : min(token_end, end)]
            # A token that straddles the answer's start is trained only if its answer part is more than
            # whitespace: " hi" after Mistral's "[/INST]" must be (the prompt ends at "[/INST]"), "\n " of
            # ChatML's header newline and an answer's leading space must not (the newline belongs to the
            # generation prompt). Every token of the end-of-turn text is trained, a plain one that also
            # holds the layout newline after it included ("<|im_end|>" as plain text can end in ">\n").
            if (start <= token_start and token_end <= end) or inside.strip() or token_end > end:
                labels[i] = input_ids[i]
            i += 1
    return labels


def _example(plan: Plan, input_ids, offsets, max_length) -> dict:
    labels = label_tokens(plan.text, input_ids, offsets, plan.spans)
    input_ids, total, cut = list(input_ids), len(input_ids), False
    if max_length is not None:
        # Keep the start: the system prompt and the question are what the answer is conditioned on.
        cut = any(label != IGNORE_INDEX for label in labels[max_length:])  # trained tokens lost: an answer cut short
        input_ids, labels = input_ids[:max_length], labels[:max_length]
    if all(label == IGNORE_INDEX for label in labels):
        if max_length is not None and total > max_length:
            raise NoTrainableTokens(
                "truncated",
                f"every assistant token lies beyond max_length={max_length} (the conversation has {total} tokens)",
            )
        raise NoTrainableTokens("no_assistant", "the assistant answers are empty and no end-of-turn text follows them")
    return {
        "input_ids": input_ids,
        "labels": labels,
        "cut": cut,
        "no_end_marker": plan.no_end_marker,
        "reasoning_not_rendered": plan.reasoning_not_rendered,
    }


def _check_turns(turns: str) -> None:
    if turns not in TURNS:
        raise DataError(f"data.turns={turns!r}: use one of {', '.join(TURNS)}", param="data.turns")


def _check_max_length(max_length) -> None:
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be a positive number of tokens, got {max_length}")


def _tokenized(tokenizer, planned, max_length, turns):
    """planned: [(messages, plan, fell_back), ...]. Tokenizes every plan's text in one call and yields, in
    order, each plan's example, or the NoTrainableTokens that dropped it. An example of a conversation
    trained as rendered (no fallback) also gets the `{% generation %}` second opinion."""
    ids, offsets = tokenize_texts(tokenizer, [plan.text for _, plan, _ in planned])
    for (messages, plan, fell_back), plan_ids, plan_offsets in zip(planned, ids, offsets):
        try:
            example = _example(plan, plan_ids, plan_offsets, max_length)
        except NoTrainableTokens as dropped:
            yield dropped
            continue
        if not fell_back:
            _check_generation_blocks(tokenizer, messages, plan, plan_ids, plan_offsets, turns)
        yield example


def encode_conversation(tokenizer, messages, max_length=None, turns: str = "all") -> dict:
    """-> {"input_ids", "labels" (IGNORE_INDEX where not trained), "cut", "no_end_marker",
    "reasoning_not_rendered"}: one example, `turns` "all" or "last", trained as rendered (a template that
    changes an earlier answer's content raises ChatTemplateError here, and one that drops an earlier
    answer's reasoning trains it without; encode_examples falls back to one example per turn instead).

    The start is kept and the end cut when `max_length` is given; raises NoTrainableTokens when nothing
    is left to train ("no_assistant" or "truncated"): an all-IGNORE_INDEX example is never returned.
    """
    if turns == "split":
        raise ValueError("encode_conversation gives one example; use encode_examples for turns='split'")
    _check_max_length(max_length)
    (plan,), _ = plan_examples(tokenizer, messages, turns, fallback=False)
    (example,) = _tokenized(tokenizer, [(messages, plan, False)], max_length, turns)
    if isinstance(example, NoTrainableTokens):
        raise example
    return example


def encode_examples(tokenizer, messages, max_length=None, turns: str = "all") -> tuple[list[dict], bool]:
    """-> (examples, fell_back): every example of one conversation under `turns` (see the module doc).
    An example with nothing left to train after truncation is left out; NoTrainableTokens when none is left."""
    _check_max_length(max_length)
    plans, fell_back = plan_examples(tokenizer, messages, turns)
    results = list(_tokenized(tokenizer, [(messages, plan, fell_back) for plan in plans], max_length, turns))
    examples = [r for r in results if not isinstance(r, NoTrainableTokens)]
    if not examples:
        raise results[-1]
    return examples, fell_back


def _check_generation_blocks(tokenizer, messages, plan: Plan, input_ids, offsets, turns: str) -> None:
    """A template with `{% generation %}` blocks states itself what the model generates; the tokenizer
    turns those blocks into an assistant mask. Use it as a second opinion: if it disagrees with the
    located content + end marker, one of the two is wrong and training on either would be a silent bug."""
    if turns != "all" or not _GENERATION_BLOCK.search(chat_template(tokenizer)):
        return
    out = tokenizer.apply_chat_template(
        prepared_messages(tokenizer, messages), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    theirs = [bool(x) for x in out["assistant_masks"]]
    ours = [label != IGNORE_INDEX for label in label_tokens(plan.text, input_ids, offsets, plan.spans)]
    # The tokenizer marks every token that touches a block; a token straddling the start of an answer
    # is decided by label_tokens' whitespace rule instead, so only those may differ.
    straddling = {i for i, (a, b) in enumerate(offsets) for start, _, _ in plan.spans if a < start < b}
    differ = [i for i in range(len(input_ids)) if theirs[i] != ours[i] and i not in straddling]
    if list(out["input_ids"]) != list(input_ids) or differ:
        only_theirs = [input_ids[i] for i in differ if theirs[i]]
        only_ours = [input_ids[i] for i in differ if ours[i]]
        raise ChatTemplateError(
            "the chat template's {% generation %} blocks disagree with the assistant content it renders: "
            f"marked only by the template: {tokenizer.decode(only_theirs)!r}; located only by kit: "
            f"{tokenizer.decode(only_ours)!r}. Fix: make each {{% generation %}} block wrap exactly the "
            "assistant content and the end-of-turn token after it (not the role header, not the newline)."
        )


# --------------------------------------------------------------------------------------------------
# Many conversations, on every core, cached
# --------------------------------------------------------------------------------------------------

PARALLEL_FROM = 4000
"""Below this many conversations, one process: starting workers would cost more than it saves."""

_CHUNK = 256  # conversations rendered, then tokenized in one batched call


def encode_records(tokenizer, conversations, max_length=None, turns: str = "all", cache_dir=None, num_proc=None):
    """Encode many conversations (each a list of {"role","content"} dicts).

    Returns (dataset, stats): a datasets.Dataset with columns input_ids, labels, length, and the
    counts of STAT_KEYS plus "cache_hit". Conversations with nothing to train are dropped and counted,
    never kept as all-IGNORE_INDEX rows. `num_proc` worker processes share the work (default: every
    core, from PARALLEL_FROM conversations on); the result does not depend on it. With `cache_dir`, the
    result is saved as Arrow under a key of (tokenizer name + vocab hash, chat template, max_length,
    turns, data hash); the same call again loads it without tokenizing anything.
    """
    import datasets  # here, not at import time: encode_conversation alone does not need it

    conversations = list(conversations)
    _check_turns(turns)
    _check_max_length(max_length)
    cache_path = None
    if cache_dir is not None:
        key = _cache_key(tokenizer, conversations, max_length, turns)
        cache_path = Path(cache_dir) / f"tokenized-{key}"
        if (cache_path / "kit_stats.json").exists():
            stats = json.loads((cache_path / "kit_stats.json").read_text())
            return datasets.load_from_disk(str(cache_path)), {**stats, "cache_hit": True}

    chunks = [conversations[i : i + _CHUNK] for i in range(0, len(conversations), _CHUNK)]
    workers = _workers(num_proc, len(conversations))
    if workers > 1:
        results = _map_in_processes(tokenizer, chunks, max_length, turns, workers)
    else:
        results = [_encode_chunk(tokenizer, chunk, max_length, turns) for chunk in chunks]
    columns = {"input_ids": [], "labels": [], "length": []}
    stats = dict.fromkeys(STAT_KEYS, 0)
    for chunk_columns, chunk_stats in results:
        for name in columns:
            columns[name].extend(chunk_columns[name])
        for name in STAT_KEYS:
            stats[name] += chunk_stats[name]

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


def _encode_chunk(tokenizer, conversations, max_length, turns):
    """Render and plan each conversation, tokenize the chunk's texts in one call, then label."""
    columns = {"input_ids": [], "labels": [], "length": []}
    stats = dict.fromkeys(STAT_KEYS, 0)
    planned, owners = [], []  # (messages, plan, fell_back) per example; its conversation's index
    for n, messages in enumerate(conversations):
        stats["conversations"] += 1
        try:
            plans, fell_back = plan_examples(tokenizer, messages, turns)
        except NoTrainableTokens as dropped:
            stats[f"dropped_{dropped.reason}"] += 1
            continue
        stats["split_fallback"] += fell_back
        planned += [(messages, plan, fell_back) for plan in plans]
        owners += [n] * len(plans)
    if not planned:
        return columns, stats
    kept_from: dict[int, bool | str] = {}  # conversation -> True once an example is kept, else why dropped
    for n, example in zip(owners, _tokenized(tokenizer, planned, max_length, turns)):
        if isinstance(example, NoTrainableTokens):
            if kept_from.get(n) is not True:
                kept_from[n] = example.reason
            continue
        kept_from[n] = True
        columns["input_ids"].append(example["input_ids"])
        columns["labels"].append(example["labels"])
        columns["length"].append(len(example["input_ids"]))
        stats["kept"] += 1
        stats["cut_truncated"] += example["cut"]
        stats["no_end_marker"] += example["no_end_marker"]
        stats["reasoning_not_rendered"] += example["reasoning_not_rendered"]
    for reason in kept_from.values():  # a conversation with nothing left to train
        if reason is not True:
            stats[f"dropped_{reason}"] += 1
    return columns, stats


def _workers(num_proc, n_conversations: int) -> int:
    if num_proc is not None:
        return max(1, int(num_proc))
    if n_conversations < PARALLEL_FROM or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)


_worker_tokenizer = None  # set in the parent before the fork, so workers inherit it instead of unpickling it


def _worker_chunk(args):
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the worker is one core; no nested Rust threads
    return _encode_chunk(_worker_tokenizer, *args)


def _map_in_processes(tokenizer, chunks, max_length, turns, workers):
    # fork: a worker starts in milliseconds with the tokenizer already loaded. Workers only render and
    # tokenize (no torch, no CUDA), so forking a process that holds a model is safe.
    global _worker_tokenizer
    template_facts(tokenizer)  # probed once here, inherited by every worker
    _worker_tokenizer = tokenizer
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            return pool.map(_worker_chunk, [(chunk, max_length, turns) for chunk in chunks], chunksize=4)
    finally:
        _worker_tokenizer = None


def _cache_key(tokenizer, conversations, max_length, turns) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False)
    special = sorted(tokenizer.all_special_ids)
    identity = {
        "format": CACHE_FORMAT,
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "vocab": hashlib.sha256(vocab.encode()).hexdigest(),
        "special_ids": special,  # which added tokens are special changes how a text splits
        "chat_template": chat_template(tokenizer),
        "max_length": max_length,
        "turns": turns,
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
