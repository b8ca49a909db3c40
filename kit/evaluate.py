"""Score a model (base or base + adapter) on the shared eval split.

    result = evaluate_model(model, tokenizer, eval_records, cfg.eval, max_length)
    result["eval_loss"], result["json_valid_rate"], result["generations"]

- eval loss: mean cross-entropy over the *trained* tokens only (assistant content
  and its end-of-turn marker), token-weighted across the whole split, so it is the
  same quantity the training loss measures.
- JSON validity rate: the share of eval prompts whose greedy answer parses as a
  JSON object or array (a ```json fence around it is allowed). A bare number or
  string is not counted: the kit is for tasks whose answers are JSON documents.
- schema validity rate (optional): the share of those greedy answers whose JSON
  also validates against a JSON Schema (jsonschema, the schema's own draft).
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager

import torch

from kit.collator import IGNORE_INDEX, SFTCollator
from kit.data.prompts import encode_prompt
from kit.data.records import to_messages
from kit.data.template import THINK_CLOSE, template_facts
from kit.data.tokenize import NoTrainableTokens, encode_examples
from kit.errors import DataError
from kit.loss import labelled_loss

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def parse_json_answer(text: str):
    """The JSON object/array in an answer (optionally fenced, optionally after a reasoning model's
    `<think>...</think>` block), or None when there is none."""
    text = text.rpartition(THINK_CLOSE)[2].strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, (dict, list)) else None


def json_valid_rate(answers: list[str]) -> float:
    if not answers:
        return 0.0
    return sum(parse_json_answer(a) is not None for a in answers) / len(answers)


def schema_valid_rate(answers: list[str], schema: dict) -> float:
    """Share of answers that parse as JSON (as json_valid_rate) and validate against `schema`."""
    import jsonschema

    if not answers:
        return 0.0
    # The schema's own $schema draft decides the rules; a broken schema fails here, once, by name.
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    valid = 0
    for answer in answers:
        value = parse_json_answer(answer)
        valid += value is not None and validator.is_valid(value)
    return valid / len(answers)


@contextmanager
def _eval_mode(model):
    """Eval mode (no dropout) for the block, then the mode the caller had, even if the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def eval_examples(tokenizer, conversations: list[list[dict]], max_length: int, turns: str = "all") -> list[dict]:
    """The examples the eval loss is taken over: those the training set would keep, tokenized the same way."""
    encoded = []
    for messages in conversations:
        try:
            encoded += encode_examples(tokenizer, messages, max_length=max_length, turns=turns)[0]
        except NoTrainableTokens:
            continue  # the same examples the training set would drop
    return encoded


def eval_batches(tokenizer, eval_records: list[dict], eval_cfg, max_length: int, turns: str = "all") -> int:
    """How many batches evaluate_model runs (generation + loss), for a progress bar with an ETA."""
    conversations = [to_messages(r) for r in eval_records]
    loss_set = conversations[: eval_cfg.max_samples] if eval_cfg.max_samples else conversations
    n_gen = len(conversations[: eval_cfg.generate_samples])
    n_loss = len(eval_examples(tokenizer, loss_set, max_length, turns))
    return -(-n_gen // eval_cfg.batch_size) + -(-n_loss // eval_cfg.batch_size)


@torch.no_grad()
def eval_loss(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_length: int,
    batch_size: int = 8,
    turns: str = "all",
    on_batch=None,
) -> float:
    """Token-weighted masked cross-entropy over the tokens training labels (`turns` as data.turns)."""
    encoded = eval_examples(tokenizer, conversations, max_length, turns)
    if not encoded:
        raise DataError(
            "no eval example has an assistant token within data.max_length: raise data.max_length, "
            "or give eval records with shorter prompts",
            param="data.max_length",
        )
    collate = SFTCollator(tokenizer)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with _eval_mode(model):
        for i in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate(encoded[i : i + batch_size]).items()}
            count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            # The summed loss (over 1 item), the LM head run only where it is scored (kit/loss.py).
            total += labelled_loss(model, batch, num_items_in_batch=1)[0].item()
            if on_batch is not None:
                on_batch()
    return total / count


def _stop_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the tokenizer's eos and the model's generation eos (e.g. Llama-3's <|eot_id|>)."""
    ids = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(value)
    return sorted(ids)


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 128,
    batch_size: int = 8,
    on_batch=None,
    min_new_tokens: int = 0,
) -> list[str]:
    """Greedy answers to each conversation's last assistant turn, batched with left padding; `on_batch()`
    after each batch (a progress bar); `min_new_tokens` forces that many (kit/train.py's speed probe)."""
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = _stop_ids(model, tokenizer)
    # An end-of-turn text that is no single stop token (a base model's plain "<|im_end|>") stops
    # generation as a string, and is cut from the answer.
    closing = template_facts(tokenizer).closing.strip()
    ids = tokenizer(closing, add_special_tokens=False)["input_ids"] if closing else []
    stop_text = closing if closing and not (len(ids) == 1 and ids[0] in stop) else None
    by_string = {"stop_strings": [stop_text], "tokenizer": tokenizer} if stop_text else {}
    answers = []
    prompts = [encode_prompt(tokenizer, messages) for messages in conversations]
    with _eval_mode(model):
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            width = max(len(p) for p in chunk)
            ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad_id,
                eos_token_id=stop,
                **({"min_new_tokens": min_new_tokens} if min_new_tokens else {}),
                **by_string,
            )
            for row in out[:, width:]:
                answer = tokenizer.decode(row, skip_special_tokens=True)
                answers.append(answer.split(stop_text)[0] if stop_text else answer)
            if on_batch is not None:
                on_batch()
    return answers


def evaluate_model(
    model,
    tokenizer,
    eval_records: list[dict],
    eval_cfg,
    max_length: int,
    schema: dict | None = None,
    turns="all",
    on_batch=None,
) -> dict:
    """eval_loss, json_valid_rate (and schema_valid_rate with a schema) and the generations, on the eval split;
    `on_batch()` after each of its eval_batches() batches."""
    conversations = [to_messages(r) for r in eval_records]
    loss_set = conversations[: eval_cfg.max_samples] if eval_cfg.max_samples else conversations
    gen_set = conversations[: eval_cfg.generate_samples]
    answers = generate_answers(
        model, tokenizer, gen_set, eval_cfg.max_new_tokens, eval_cfg.batch_size, on_batch=on_batch
    )
    result = {
        "eval_loss": eval_loss(model, tokenizer, loss_set, max_length, eval_cfg.batch_size, turns, on_batch),
        "json_valid_rate": json_valid_rate(answers),
        "eval_examples": len(loss_set),
        "generated": len(answers),
        "generations": answers,
    }
    if schema is not None:
        result["schema_valid_rate"] = schema_valid_rate(answers, schema)
    return result
