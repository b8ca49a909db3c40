"""Synthetic dataset for the kit demo, and the checker that scores a model on it.

Owns the demo task: a short request with constraints ("Design a 3-bedroom house
of 120 m² with 2 bathrooms and a garage.") answered by one line of JSON that
satisfies them. Every record also carries its constraints, so an answer from a
fine-tuned model can be checked without the reference answer (`satisfies`,
`task_accuracy`).

The task is sized for the CPU demo (SmolLM2-135M-Instruct, ~50 steps per shard):
a whole ChatML conversation is about 100-130 tokens (a fixed 32 of them are the
default system prompt and role markers), the answer about 50-60.

    python scripts/make_demo_data.py --n 3000 --seed 0 --out demo-out/data.jsonl

Stdlib only. Tests: python -m pytest tests/scripts/test_make_demo_data.py -q
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# One definition of "parses as JSON" for the kit's JSON validity rate and the demo's task accuracy.
from kit.evaluate import parse_json_answer  # noqa: F401  (re-exported for the demo)

# Keys of an answer, in the order they are always written.
ANSWER_KEYS = ("type", "bedrooms", "bathrooms", "area_m2", "floors", "garage", "garden", "bedroom_m2")

# Value written for an optional constraint the request does not state.
DEFAULTS = {"floors": 1, "garage": False, "garden": False}

# Per building type: bedroom range, smallest/largest area (m²), most floors.
BUILDING_TYPES = {
    "house": {"bedrooms": (2, 5), "area_m2": (60, 300), "max_floors": 3},
    "apartment": {"bedrooms": (1, 4), "area_m2": (35, 160), "max_floors": 2},
    "cabin": {"bedrooms": (1, 3), "area_m2": (30, 120), "max_floors": 2},
}

AREA_UNITS = ("m²", "square meters", "sqm", "m2")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}


def bedroom_areas(bedrooms: int, area_m2: int) -> list[int]:
    """Bedroom sizes in m², a step function of the total area so a small model can learn it.

    The primary bedroom is 4 m² larger than the others. With the smallest area
    `make_example` allows (25 + 20 per bedroom) the sum stays well under the total.
    """
    if area_m2 < 90:
        size = 9
    elif area_m2 < 160:
        size = 11
    else:
        size = 14
    return [size + 4] + [size] * (bedrooms - 1)


def answer_for(constraints: dict) -> dict:
    """The reference answer: stated constraints, defaults for the rest, derived bedroom sizes."""
    full = {**DEFAULTS, **constraints}
    answer = {key: full[key] for key in ANSWER_KEYS if key != "bedroom_m2"}
    answer["bedroom_m2"] = bedroom_areas(full["bedrooms"], full["area_m2"])
    return answer


# ---------------------------------------------------------------- request phrasing


def _count(rng: random.Random, n: int, noun: str) -> str:
    """'3 bedrooms', sometimes 'three bedrooms', so the model must read both forms."""
    number = NUMBER_WORDS[n] if rng.random() < 0.3 else str(n)
    return f"{number} {noun}" + ("" if n == 1 else "s")


def _join(phrases: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _extras(constraints: dict) -> list[str]:
    """Phrases for the optional constraints that are stated, in a fixed order."""
    phrases = []
    if "floors" in constraints:
        floors = constraints["floors"]
        phrases.append("one floor" if floors == 1 else f"{floors} floors")
    for key in ("garage", "garden"):
        if key in constraints:
            phrases.append(f"a {key}" if constraints[key] else f"no {key}")
    return phrases


def _key_values(constraints: dict) -> str:
    """'; floors: 2; garage: yes' for the form-style template."""
    parts = []
    for key in ("floors", "garage", "garden"):
        if key in constraints:
            value = constraints[key]
            parts.append(f"{key}: {('yes' if value else 'no') if isinstance(value, bool) else value}")
    return "".join(f"; {part}" for part in parts)


def _with(phrases: list[str]) -> str:
    return f" with {_join(phrases)}" if phrases else ""


# Each template takes the phrase pieces `p` and returns the request. Constraint
# order differs between templates so position alone never gives a number away.
TEMPLATES = (
    lambda p: f"Design a {p['bed_adj']} {p['type']} of {p['area']} with {_join([p['bath'], *p['extras']])}.",
    lambda p: f"I need {p['a_type']} with {_join([p['bed'], p['bath'], *p['extras']])}, {p['area']} in total.",
    lambda p: f"Plan {p['a_type']}: {', '.join([p['area'], p['bed'], p['bath'], *p['extras']])}.",
    lambda p: f"{p['area']} {p['type']}, {', '.join([p['bed'], p['bath'], *p['extras']])}. Layout as JSON, please.",
    lambda p: f"Can you lay out {p['a_type']} with {p['bath']} and {p['bed']} in {p['area']}{_with(p['extras'])}?",
    lambda p: (
        f"Give me a {p['bed_adj']} {p['type']} plan. Total area: {p['area']}. Bathrooms: {p['bath_n']}."
        + (f" Also: {_join(p['extras'])}." if p["extras"] else "")
    ),
    lambda p: f"Sketch {p['a_type']} of {p['area']} having {', '.join([p['bed'], *p['extras']])} and {p['bath']}.",
    lambda p: f"My plot fits {p['area']}. I want {p['a_type']} with {_join([p['bed'], p['bath'], *p['extras']])}.",
    lambda p: f"We want {p['bed']} and {p['bath']} in a {p['area']} {p['type']}{_with(p['extras'])}. Output JSON.",
    lambda p: (
        f"Floor plan request. type: {p['type']}; bedrooms: {p['bed_n']}; bathrooms: {p['bath_n']}; "
        f"area: {p['area']}{p['key_values']}."
    ),
)


def _sample_constraints(rng: random.Random) -> dict:
    building = rng.choice(sorted(BUILDING_TYPES))
    spec = BUILDING_TYPES[building]
    bedrooms = rng.randint(*spec["bedrooms"])
    bathrooms = rng.randint(1, min(3, bedrooms))
    # Smallest area leaves room for the bedrooms; areas are multiples of 5 m².
    lowest = max(spec["area_m2"][0], 25 + 20 * bedrooms)
    area_m2 = 5 * rng.randint(-(-lowest // 5), spec["area_m2"][1] // 5)
    constraints = {"type": building, "bedrooms": bedrooms, "bathrooms": bathrooms, "area_m2": area_m2}
    # Optional constraints: each stated about half the time, so defaults get learned too.
    if rng.random() < 0.4:
        constraints["floors"] = rng.randint(1, spec["max_floors"])
    for key in ("garage", "garden"):
        if rng.random() < 0.5:
            constraints[key] = rng.random() < 0.6
    return constraints


def make_example(rng: random.Random) -> dict:
    """One record: the chat (request -> JSON answer), its constraints, and the template used."""
    constraints = _sample_constraints(rng)
    template = rng.randrange(len(TEMPLATES))
    pieces = {
        "type": constraints["type"],
        "a_type": ("an " if constraints["type"] == "apartment" else "a ") + constraints["type"],
        "area": f"{constraints['area_m2']} {rng.choice(AREA_UNITS)}",
        "bed": _count(rng, constraints["bedrooms"], "bedroom"),
        "bed_adj": f"{constraints['bedrooms']}-bedroom",
        "bed_n": str(constraints["bedrooms"]),
        "bath": _count(rng, constraints["bathrooms"], "bathroom"),
        "bath_n": str(constraints["bathrooms"]),
        "extras": _extras(constraints),
        "key_values": _key_values(constraints),
    }
    request = TEMPLATES[template](pieces)
    request = request[0].upper() + request[1:]
    # Compact separators: the digits are one token each already, and spaces would add
    # ~15 tokens to every answer (the budget is ~130 tokens for the whole chat).
    answer = json.dumps(answer_for(constraints), separators=(",", ":"), ensure_ascii=False)
    return {
        "messages": [{"role": "user", "content": request}, {"role": "assistant", "content": answer}],
        "constraints": constraints,
        "template": template,
    }


def generate(n: int, seed: int = 0) -> list[dict]:
    """`n` records; the same seed always gives the same records."""
    rng = random.Random(seed)
    return [make_example(rng) for _ in range(n)]


# ---------------------------------------------------------------- checking answers


def request_constraints(record: dict) -> dict:
    """The constraints a record's request states (its "constraints" field)."""
    if "constraints" not in record:
        raise KeyError(
            "record has no 'constraints' field; records from scripts/make_demo_data.py carry one "
            f"(keys present: {sorted(record)})"
        )
    return dict(record["constraints"])


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def satisfies(constraints: dict, answer_text: str) -> bool:
    """True if the answer parses, has every key with the right type, meets every stated
    constraint, and is consistent: one size per bedroom, sizes positive, summing to ≤ the area."""
    answer = parse_json_answer(answer_text)
    if not isinstance(answer, dict) or any(key not in answer for key in ANSWER_KEYS):
        return False
    if not isinstance(answer["type"], str):
        return False
    if not all(_is_int(answer[key]) and answer[key] >= 1 for key in ("bedrooms", "bathrooms", "area_m2", "floors")):
        return False
    if not all(isinstance(answer[key], bool) for key in ("garage", "garden")):
        return False
    if any(answer.get(key) != value for key, value in constraints.items()):
        return False
    sizes = answer["bedroom_m2"]
    return (
        isinstance(sizes, list)
        and len(sizes) == answer["bedrooms"]
        and all(_is_int(size) and size > 0 for size in sizes)
        and sum(sizes) <= answer["area_m2"]
    )


def task_accuracy(records: list[dict], answers: list[str]) -> float:
    """Fraction of answers that satisfy their record's constraints (0.0 for no records)."""
    if len(records) != len(answers):
        raise ValueError(f"got {len(records)} records but {len(answers)} answers; pass one answer per record")
    if not records:
        return 0.0
    passed = sum(satisfies(request_constraints(record), answer) for record, answer in zip(records, answers))
    return passed / len(records)


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo's synthetic JSONL dataset.")
    parser.add_argument("--n", type=int, default=3000, help="number of records")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same records")
    parser.add_argument("--out", type=Path, default=Path("demo-out/data.jsonl"), help="JSONL file to write")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be at least 1, got {args.n}")
    records = generate(args.n, seed=args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
