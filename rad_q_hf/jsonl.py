"""The one JSON-lines reader: plain or gzip (`.gz`) files, blank lines skipped, errors naming the file and line.

Training data (`rad_q_hf.data`), evaluation prompts and the evaluation's appended sample files all read through it.
"""

import gzip
import json
from collections.abc import Iterator
from pathlib import Path


class JSONLError(ValueError):
    """A line that is not valid JSON; the message names the file and the line."""


def read_jsonl(path: str | Path, *, complete_lines_only: bool = False) -> Iterator[tuple[int, object]]:
    """Yield `(line number, value)` for every non-blank line of `path` (gzip when it ends in `.gz`).

    `complete_lines_only=True` is for files appended to as a run goes: a last line without its newline (a write cut
    short) is left out instead of failing; `drop_torn_tail` cuts it off before appending again.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "rows.jsonl"
    >>> _ = path.write_text('{"a": 1}\\n\\n{"a": 2}\\n{"a": ')
    >>> list(read_jsonl(path, complete_lines_only=True))
    [(1, {'a': 1}), (3, {'a': 2})]
    """
    path = Path(path)
    if complete_lines_only:
        data = path.read_bytes()
        # split("\n"), not splitlines(): that also splits at U+2028, U+0085 and others, which json.dumps leaves
        # unescaped inside strings (ensure_ascii=False) and which LMs do write.
        lines = data[: data.rfind(b"\n") + 1].decode("utf-8").split("\n")
        yield from _parse(path, lines)
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from _parse(path, f)


def _parse(path: Path, lines) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise JSONLError(f"{path}, line {number} is not valid JSON ({error}).") from error


def drop_torn_tail(path: str | Path) -> None:
    """Cut a last line without its newline (an interrupted append) off `path`, if there is one."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        with open(path, "r+b") as f:
            f.truncate(complete)


__all__ = ["JSONLError", "drop_torn_tail", "read_jsonl"]
