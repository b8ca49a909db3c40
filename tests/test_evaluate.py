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
