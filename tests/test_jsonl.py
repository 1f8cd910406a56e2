"""The JSON-lines reader against what the evaluation writes: any text an LM can produce must read back."""

import gzip
import json

import pytest

from rad_q_hf.evaluation.storage import append_rows, read_rows
from rad_q_hf.jsonl import JSONLError, read_jsonl

# U+2028, U+2029 and U+0085: str.splitlines() breaks lines there, json.dumps(ensure_ascii=False) writes them raw;
# the others (escaped by json.dumps) must survive too.
ODD = ["a\u2028b", "c\u2029d", "e\x85f", "tab\tand\x1cfile separator", "\r\n inside", "\u00e9\U0001f37e"]


def test_samples_with_unicode_line_separators_read_back(tmp_path):
    path = tmp_path / "part-0.jsonl"
    rows = [{"index": i, "prompt": "p", "continuations": [text, "plain"]} for i, text in enumerate(ODD)]
    append_rows(path, rows[:3])
    append_rows(path, rows[3:])
    assert read_rows(path) == rows  # the appended-file path (complete lines only)
    assert [row for _, row in read_jsonl(path)] == rows  # the plain path


def test_gzip_and_errors_name_the_line(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"t": ODD[0]}, ensure_ascii=False) + "\n\n" + '{"t": "x"\n')
    with pytest.raises(JSONLError, match=r"rows.jsonl.gz, line 3 is not valid JSON"):
        list(read_jsonl(path))
