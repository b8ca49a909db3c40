"""Record schema: both formats accepted, every malformed line named as FILE:LINE.

.venv/bin/python -m pytest tests/data/test_records.py -q
"""

import pytest

from kit.data.records import read_jsonl, to_messages
from kit.errors import RecordError


def write(tmp_path, *lines):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_chat_and_prompt_completion_records_both_load(tmp_path):
    path = write(
        tmp_path,
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "{}"}]}',
        '{"prompt": "p", "completion": "c", "extra": 1}',
    )
    records = read_jsonl(path)
    assert [m["role"] for m in to_messages(records[1])] == ["user", "assistant"]
    assert to_messages(records[1])[1]["content"] == "c"


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{not json", "not valid JSON"),
        ('{"messages": []}', "non-empty list"),
        ('{"messages": [{"role": "user", "content": "x"}]}', 'no "assistant" message'),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "role is 'bot'"),
        ('{"messages": [{"role": "assistant", "content": 3}]}', "content must be a string"),
        ('{"prompt": "only"}', '"completion" must be a string'),
        ('{"text": "x"}', 'needs "messages"'),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_a_malformed_record_is_reported_with_file_and_line(tmp_path, line, reason):
    good = '{"prompt": "p", "completion": "c"}'
    path = write(tmp_path, good, "", good, line)
    with pytest.raises(RecordError) as err:
        read_jsonl(path)
    assert str(err.value).startswith(f"{path}:4: ")
    assert reason in str(err.value)
