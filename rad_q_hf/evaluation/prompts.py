"""Evaluation prompts: the shipped sets by name, or any JSONL file with `prompt.text` or `text` per line."""

from pathlib import Path

from ..jsonl import read_jsonl

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
SHIPPED_PROMPTS = ("rtp-nontoxic", "sentiment-neutral", "sentiment-negative", "sentiment-positive")
DEFAULT_PROMPTS = {"detox": "rtp-nontoxic", "positive": "sentiment-neutral", "negative": "sentiment-neutral"}


def load_prompts(name_or_path: str, num_prompts: int | None = None) -> list[str]:
    """The first `num_prompts` prompts of a shipped set (see `rad_q_hf/prompts/SOURCE.md`) or a JSONL file.

    >>> prompts = load_prompts("sentiment-neutral", 2)
    >>> len(prompts), prompts[0]
    (2, 'God never intended to')
    """
    if name_or_path in SHIPPED_PROMPTS:
        path = PROMPTS_DIR / f"{name_or_path}.jsonl.gz"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"No prompt file {name_or_path!r}: give a JSONL file or one of the shipped sets {list(SHIPPED_PROMPTS)}."
            )
    prompts = []
    for number, row in read_jsonl(path):
        try:
            text = row["prompt"]["text"] if isinstance(row.get("prompt"), dict) else row["text"]
        except (AttributeError, KeyError, TypeError) as error:
            raise ValueError(
                f"{path}, line {number}: each line must be a JSON object with `prompt.text` or `text` ({error!r})."
            ) from error
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{path}, line {number}: the prompt text is empty or not a string.")
        prompts.append(text)
        if num_prompts is not None and len(prompts) == num_prompts:
            break
    if num_prompts is not None and len(prompts) < num_prompts:
        raise ValueError(f"{path} has {len(prompts)} prompts, fewer than the {num_prompts} asked for.")
    return prompts
