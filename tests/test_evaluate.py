"""Evaluation leaves the model as it found it: eval mode only while scoring, even when scoring fails.

.venv/bin/python -m pytest tests/test_evaluate.py -q    # seconds, no network
"""

import pytest
import torch

from kit.evaluate import eval_loss, generate_answers


class Broken(torch.nn.Module):
    """A model whose forward and generate fail, as an out-of-memory in the middle of an eval would."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)

    def forward(self, **kwargs):
        raise RuntimeError("boom")

    def generate(self, **kwargs):
        raise RuntimeError("boom")


CHAT = [[{"role": "user", "content": "size?"}, {"role": "assistant", "content": '{"m2": 120}'}]]


@pytest.mark.parametrize(
    "score",
    [
        lambda model, tok: eval_loss(model, tok, CHAT, max_length=64),
        lambda model, tok: generate_answers(model, tok, CHAT, max_new_tokens=4),
    ],
    ids=["eval_loss", "generate_answers"],
)
def test_a_failed_evaluation_puts_a_training_model_back_in_train_mode(score, tokenizer):
    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        score(model, tokenizer)
    assert model.training


def test_a_reasoning_models_think_block_is_not_part_of_the_json_answer():
    from kit.evaluate import parse_json_answer

    assert parse_json_answer('<think>\nThe sum is 4.\n</think>\n\n{"sum": 4}') == {"sum": 4}
    assert parse_json_answer("<think>\n{not json}\n</think>\n\n") is None
    assert parse_json_answer('{"sum": 4}') == {"sum": 4}


class Scripted(torch.nn.Module):
    """Generates a fixed continuation after the prompt and records how it was asked to stop."""

    def __init__(self, continuation):
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)
        self.continuation, self.kwargs = continuation, None

    def generate(self, input_ids, **kwargs):
        self.kwargs = kwargs
        tail = torch.tensor([self.continuation] * input_ids.shape[0])
        return torch.cat([input_ids, tail], dim=1)


def test_an_end_marker_of_plain_text_stops_generation_and_is_cut_from_the_answer(smollm2_dir):
    import copy
    from pathlib import Path

    from transformers import AutoTokenizer

    tokenizer = copy.deepcopy(AutoTokenizer.from_pretrained(smollm2_dir))
    fixtures = Path(__file__).parent / "fixtures" / "chat_templates"
    tokenizer.chat_template = (fixtures / "gemma.jinja").read_text()  # <end_of_turn>: plain text here
    said = '{"m2": 120}<end_of_turn>\n<start_of_turn>user'
    model = Scripted(tokenizer(said, add_special_tokens=False)["input_ids"])
    answers = generate_answers(model, tokenizer, CHAT, max_new_tokens=4)
    assert answers == ['{"m2": 120}']
    assert model.kwargs["stop_strings"] == ["<end_of_turn>"] and model.kwargs["tokenizer"] is tokenizer


def test_an_end_marker_that_is_a_stop_token_needs_no_stop_string(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)  # ChatML; <|im_end|> is its eos
    model = Scripted(tokenizer('{"m2": 120}<|im_end|>', add_special_tokens=False)["input_ids"])
    assert generate_answers(model, tokenizer, CHAT, max_new_tokens=4) == ['{"m2": 120}']
    assert "stop_strings" not in model.kwargs
