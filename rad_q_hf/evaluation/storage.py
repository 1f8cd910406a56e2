"""The resumable files of an output folder: appended sample parts, their merge, and the resume check.

config.json                       the run's settings and model fingerprints; a re-run must agree on everything
                                  that shapes the samples
generations/<setting>/part-<rank>.jsonl   appended one prompt batch at a time as generation goes
generations/<setting>.jsonl       all prompts of a setting, merged in prompt order
"""

import json
import os
from dataclasses import asdict
from pathlib import Path

from ..jsonl import JSONLError, drop_torn_tail, read_jsonl
from .config import SAMPLING_FIELDS, EvaluationConfig, EvaluationError, Setting
from .models import weights_fingerprint


def read_rows(path: Path, repair: bool = False) -> list[dict]:
    """The complete JSON lines of an appended file; a torn last line (an interrupted write) is dropped (and cut off
    the file with `repair=True`, before appending to it again)."""
    if not path.exists():
        return []
    if repair:
        drop_torn_tail(path)
    try:
        return [row for _, row in read_jsonl(path, complete_lines_only=True)]
    except JSONLError as error:
        raise EvaluationError(f"{error} Delete the file to redo it.") from error


def part_file(output: str, setting: Setting, process_index: int) -> Path:
    return Path(output) / "generations" / setting.name / f"part-{process_index}.jsonl"


def append_rows(path: Path, rows: list[dict]) -> None:
    """One write per prompt batch, synced: an interruption loses at most this batch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        f.flush()
        os.fsync(f.fileno())


def on_disk(output: str, setting: Setting) -> dict[int, dict]:
    """Prompt index -> its row, over every process's part file of a setting (complete lines only)."""
    rows = {}
    for part in sorted((Path(output) / "generations" / setting.name).glob("part-*.jsonl")):
        for row in read_rows(part):
            rows.setdefault(row["index"], row)
    return rows


def done(config: EvaluationConfig, setting: Setting, prompts: list[str] | None = None) -> set[int]:
    """Indices of the prompts whose samples are already on disk (with `prompts`: checked to continue their texts)."""
    rows = on_disk(config.output, setting)
    if prompts is not None:
        check_prompts(setting, rows, prompts)
    return set(rows)


def check_prompts(setting: Setting, rows: dict[int, dict], prompts: list[str]) -> None:
    """Refuse stored samples drawn for another text at the same prompt index (the prompt file was edited, or a
    package version ships another set under the same name): resumed, they would be merged and scored as if they
    continued the new text."""
    changed = [i for i, row in sorted(rows.items()) if i < len(prompts) and row["prompt"] != prompts[i]]
    if changed:
        raise EvaluationError(
            f"{setting.name}: the samples on disk for prompts {changed[:10]} continue other texts than the prompts "
            f"now loaded (e.g. prompt {changed[0]}: {rows[changed[0]]['prompt']!r} on disk, {prompts[changed[0]]!r} "
            "now); resuming would mix them. Use another --output, or the prompts they were drawn for."
        )


def merge_generations(setting: Setting, num_prompts: int, output: str) -> list[dict]:
    rows = on_disk(output, setting)
    missing = [i for i in range(num_prompts) if i not in rows]
    if missing:
        raise EvaluationError(f"{setting.name}: prompts {missing[:10]} have no samples (a process failed?); re-run.")
    merged = [rows[i] for i in range(num_prompts)]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in merged)
    (Path(output) / "generations" / f"{setting.name}.jsonl").write_text(text, encoding="utf-8")
    return merged


def check_resume(config: EvaluationConfig) -> dict[str, str]:
    """Refuse a resume that would mix samples; record the settings; return the weight fingerprints of the run."""
    path = Path(config.output) / "config.json"
    models = {"lm": config.lm} | {m: config.reward_model_name(m) for m in config.methods if m != "none"}
    fingerprints = {key: weights_fingerprint(name) for key, name in models.items()}
    old = json.loads(path.read_text()) if path.exists() else {}
    changed = [k for k in SAMPLING_FIELDS if k in old and old[k] != asdict(config)[k]]
    if changed:
        raise EvaluationError(
            f"{config.output} holds a run with other {changed} ({[old.get(k) for k in changed]}); resuming would "
            "mix samples. Use another --output, or the same settings."
        )
    stored = old.get("fingerprints", {})
    for key, fingerprint in fingerprints.items():
        pattern = "*" if key == "lm" else f"{key}_b*"  # the samples drawn with this model
        drawn = sorted(p.name for p in (Path(config.output) / "generations").glob(pattern) if p.is_dir())
        if stored.get(key, fingerprint) != fingerprint and drawn:
            raise EvaluationError(
                f"The weights of {models[key]} changed since {config.output} sampled {drawn} with it "
                f"({stored[key]} -> {fingerprint}); resuming would mix models. Use another --output, or delete "
                f"those settings' folders and .jsonl files under generations/ to redo them."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    record = asdict(config) | {"fingerprints": stored | fingerprints}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record["fingerprints"]


__all__ = ["append_rows", "check_resume", "done", "merge_generations", "on_disk", "part_file", "read_rows"]
