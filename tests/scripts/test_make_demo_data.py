"""Tests for scripts/make_demo_data.py: the demo dataset and its answer checker.

    .venv/bin/python -m pytest tests/scripts/test_make_demo_data.py -q

No network. The token-budget test uses the SmolLM2-135M-Instruct tokenizer that
`make models` prepares (conftest's smollm2_dir fixture).
"""

import importlib.util
import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_demo_data.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_demo_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _load_script()


def _answer(record: dict) -> str:
    return record["messages"][-1]["content"]


def _reference(**overrides) -> tuple[dict, dict]:
    """Constraints of a 3-bedroom house and a correct answer as a dict, with fields overridden."""
    constraints = {"type": "house", "bedrooms": 3, "bathrooms": 2, "area_m2": 120, "garage": True}
    answer = demo.answer_for(constraints)
    answer.update(overrides)
    return constraints, answer


# ---------------------------------------------------------------- generation


def test_the_same_seed_gives_the_same_records():
    assert demo.generate(50, seed=7) == demo.generate(50, seed=7)


def test_different_seeds_give_different_records():
    assert demo.generate(50, seed=0) != demo.generate(50, seed=1)


def test_records_have_a_user_request_an_assistant_answer_and_constraints():
    record = demo.make_example(random.Random(0))
    assert [message["role"] for message in record["messages"]] == ["user", "assistant"]
    assert all(isinstance(message["content"], str) and message["content"] for message in record["messages"])
    assert demo.request_constraints(record) == record["constraints"]
    assert {"type", "bedrooms", "bathrooms", "area_m2"} <= set(record["constraints"])


def test_every_generated_answer_satisfies_its_own_constraints():
    records = demo.generate(1000, seed=3)
    failing = [record for record in records if not demo.satisfies(demo.request_constraints(record), _answer(record))]
    assert failing == []


def test_answers_are_one_line_with_keys_in_the_fixed_order():
    for record in demo.generate(200, seed=4):
        text = _answer(record)
        assert "\n" not in text
        assert tuple(json.loads(text)) == demo.ANSWER_KEYS


def test_the_request_states_every_number_in_its_constraints():
    # The model must read the numbers: area always appears as digits, counts as digits or words.
    for record in demo.generate(300, seed=5):
        request, constraints = record["messages"][0]["content"], record["constraints"]
        assert str(constraints["area_m2"]) in request
        assert constraints["type"] in request
        for key in ("bedrooms", "bathrooms"):
            n = constraints[key]
            assert str(n) in request or demo.NUMBER_WORDS[n] in request


def test_requests_use_many_phrasings_and_units():
    records = demo.generate(500, seed=0)
    assert len({record["template"] for record in records}) >= 8
    requests = [record["messages"][0]["content"] for record in records]
    for unit in demo.AREA_UNITS:
        assert any(f" {unit}" in request for request in requests), unit
    assert {record["constraints"]["type"] for record in records} == set(demo.BUILDING_TYPES)
    # Optional constraints are sometimes stated and sometimes not.
    for key in ("floors", "garage", "garden"):
        stated = sum(key in record["constraints"] for record in records)
        assert 0 < stated < len(records), key


# ---------------------------------------------------------------- checking answers


def test_a_correct_answer_satisfies_its_constraints():
    constraints, answer = _reference()
    assert demo.satisfies(constraints, json.dumps(answer))


def test_an_answer_with_a_changed_bedroom_count_fails():
    constraints, answer = _reference(bedrooms=4, bedroom_m2=[15, 11, 11, 11])
    assert not demo.satisfies(constraints, json.dumps(answer))


def test_an_answer_that_contradicts_a_stated_flag_or_the_area_fails():
    constraints, _ = _reference()
    for override in ({"garage": False}, {"area_m2": 125}, {"bathrooms": 1}, {"type": "cabin"}):
        _, answer = _reference(**override)
        assert not demo.satisfies(constraints, json.dumps(answer)), override


def test_an_unstated_optional_constraint_may_take_any_valid_value():
    constraints, answer = _reference(floors=2, garden=True)
    assert demo.satisfies(constraints, json.dumps(answer))


def test_broken_json_fails():
    constraints, answer = _reference()
    text = json.dumps(answer)
    assert not demo.satisfies(constraints, text[:-1])
    assert not demo.satisfies(constraints, "")
    assert not demo.satisfies(constraints, "I would design a nice house.")


def test_an_answer_missing_a_key_fails():
    constraints, answer = _reference()
    for key in demo.ANSWER_KEYS:
        partial = {k: v for k, v in answer.items() if k != key}
        assert not demo.satisfies(constraints, json.dumps(partial)), key


def test_inconsistent_bedroom_sizes_fail():
    constraints, _ = _reference()
    for sizes in ([15, 11], [15, 11, 11, 11], [60, 40, 30], [15, 11, 0], [15, 11, "11"], "15, 11, 11"):
        _, answer = _reference(bedroom_m2=sizes)
        assert not demo.satisfies(constraints, json.dumps(answer)), sizes


def test_wrongly_typed_fields_fail():
    constraints, _ = _reference()
    for override in ({"floors": "1"}, {"floors": 0}, {"garden": "no"}, {"bathrooms": 2.5}, {"bedrooms": True}):
        _, answer = _reference(**override)
        assert not demo.satisfies(constraints, json.dumps(answer)), override


def test_fenced_answers_parse():
    payload = {"bedrooms": 3, "garage": True}
    text = json.dumps(payload)
    assert demo.parse_json_answer(f"```json\n{text}\n```") == payload
    assert demo.parse_json_answer(f"```\n{text}\n```") == payload
    assert demo.parse_json_answer(f"Here is the plan:\n```JSON\n{text}\n```\nEnjoy!") == payload
    # Chatter around a bare object is not "JSON": the validity rate and task accuracy agree on that.
    assert demo.parse_json_answer(f"Sure! {text}") is None
    # Braces outside the fence: only the fenced block parses.
    assert demo.parse_json_answer(f"Keys {{bedrooms}} first:\n```json\n{text}\n```") == payload
    assert demo.parse_json_answer("```json\n[1, 2]\n```") == [1, 2]
    assert demo.parse_json_answer(f"  {text}  ") == payload


def test_unparseable_text_gives_none():
    assert demo.parse_json_answer("```json\n{bedrooms: 3}\n```") is None
    assert demo.parse_json_answer("no json here") is None
    assert demo.parse_json_answer("") is None


def test_task_accuracy_is_the_fraction_of_satisfying_answers():
    records = demo.generate(4, seed=11)
    answers = [_answer(records[0]), _answer(records[1]), "{broken", _answer(records[0])]
    # The last answer belongs to another record; it satisfies it only if the constraints coincide.
    expected_last = demo.satisfies(records[3]["constraints"], _answer(records[0]))
    assert demo.task_accuracy(records, answers) == pytest.approx((2 + expected_last) / 4)
    assert demo.task_accuracy(records, [_answer(record) for record in records]) == 1.0
    assert demo.task_accuracy(records, [""] * 4) == 0.0
    assert demo.task_accuracy([], []) == 0.0


def test_task_accuracy_rejects_a_length_mismatch():
    records = demo.generate(3, seed=0)
    with pytest.raises(ValueError, match="3 records but 2 answers"):
        demo.task_accuracy(records, ["", ""])


def test_request_constraints_names_a_missing_field():
    with pytest.raises(KeyError, match="constraints"):
        demo.request_constraints({"messages": []})


# ---------------------------------------------------------------- CLI and length budget


def test_the_cli_writes_jsonl_records_and_prints_the_count(tmp_path):
    out = tmp_path / "nested" / "data.jsonl"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--n", "25", "--seed", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.startswith("wrote 25 records")
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == demo.generate(25, seed=2)


def test_conversations_fit_the_token_budget(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    lengths = []
    for record in demo.generate(500, seed=0):
        # Render to text then tokenize: apply_chat_template(tokenize=True) returns a
        # list or a BatchEncoding depending on the transformers version.
        text = tokenizer.apply_chat_template(record["messages"], tokenize=False)
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    assert max(lengths) <= 140, f"longest conversation is {max(lengths)} tokens"
    assert 90 <= statistics.mean(lengths) <= 130, f"mean length {statistics.mean(lengths):.1f} tokens"
