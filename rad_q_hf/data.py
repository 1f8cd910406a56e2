"""Labelled text for reward-model training.

Every loader returns a `datasets.DatasetDict` with `train` and `test` splits whose rows hold `text` (str),
`labels` (a list of floats in [0, 1], one per reward output) and `source`. The `test` split is a fixed held-out set:
it is either the corpus' own test split or chosen by a hash of the text, so it does not move when sources are added,
reordered or subsampled.

Offline, the corpora come from a data folder (`data_dir=`, or `$RAD_Q_HF_DATA`) laid out like this project's
`shared/data/` (each sub-folder documents its provenance and licence in SOURCE.md). Online, the Hub datasets the
papers used are loaded by name.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers.data.data_collator import DataCollatorMixin

from .jsonl import read_jsonl

if TYPE_CHECKING:  # `datasets` is imported where data is loaded: decoding and training steps run without it
    from datasets import Dataset, DatasetDict

DATA_ENV = "RAD_Q_HF_DATA"
# The 7 attributes of Jigsaw Unintended Bias (RAD's toxicity reward model predicts all of them; index 0 decodes).
JIGSAW_ATTRIBUTES = (
    "toxicity",
    "severe_toxicity",
    "obscene",
    "identity_attack",
    "insult",
    "threat",
    "sexual_explicit",
)


class DataError(ValueError):
    """Training data that cannot be used as it is; the message names the problem and the fix."""


def resolve_data_dir(path: str | os.PathLike | None = None) -> Path:
    """The offline data folder: `path`, else `$RAD_Q_HF_DATA`. Raises `DataError` when neither exists."""
    path = path or os.environ.get(DATA_ENV)
    if not path:
        raise DataError(
            f"No data folder given: pass `data_dir=` (`--data_dir`) or set ${DATA_ENV} to a folder laid out like the "
            "project's shared/data (toxicity/, sst2/, imdb/, amazon_reviews/)."
        )
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"Data folder {str(path)!r} does not exist; pass an existing `data_dir` (`--data_dir`).")
    return path


def held_out(text: str, percent: float, salt: str = "") -> bool:
    """Whether `text` belongs to the fixed held-out split (a stable hash of the text, not of its row number).

    A different `salt` draws an independent split (e.g. the validation split carved from train).
    """
    bucket = int(hashlib.sha1((salt + text).encode("utf-8")).hexdigest()[:8], 16) % 10_000
    return bucket < percent * 100


VALIDATION_SALT = "validation:"


def with_validation(ds: DatasetDict, percent: float) -> DatasetDict:
    """`ds` with a `validation` split carved from `train` by a salted hash of the text (`test` is left untouched).

    Hyperparameters are chosen on `validation`, so the reported `test` split stays unseen. `percent` ≤ 0, or a
    `ds` that already has a `validation` split, returns `ds` unchanged.
    """
    if percent <= 0 or "validation" in ds or "train" not in ds:
        return ds
    from datasets import DatasetDict

    is_validation = [held_out(text, percent, VALIDATION_SALT) for text in ds["train"]["text"]]
    train_rows = [i for i, v in enumerate(is_validation) if not v]
    validation_rows = [i for i, v in enumerate(is_validation) if v]
    return DatasetDict(
        {
            **ds,
            "train": ds["train"].select(train_rows),
            "validation": ds["train"].select(validation_rows),
        }
    )


def min_words(ds: DatasetDict, n: int, splits: Sequence[str] = ("train", "validation")) -> DatasetDict:
    """`ds` with only the texts of at least `n` whitespace-separated words in `splits` (`test` is left whole).

    SST-2's train split is mostly short phrases cut from the treebank (median 7 words), its dev split whole sentences
    (median 19): a stage on the long phrases trains on text shaped like what is reported (for RAD-V at 12 layers it
    did not raise dev accuracy: docs/reward_quality.md §9). `validation` stays the same hash bucket, so it is still
    disjoint from every train split a run draws from the source.
    """
    if n <= 0:
        return ds
    from datasets import DatasetDict

    kept = {s: ds[s].filter(lambda t: len(t.split()) >= n, input_columns="text") for s in splits if s in ds}
    if "train" in kept and len(kept["train"]) == 0:
        raise DataError(f"No training text has {n} or more words; lower `min_words` (`--min_words`).")
    return DatasetDict({**ds, **kept})


def _read_jsonl(path: Path) -> Iterable[dict]:
    if not path.exists():
        raise DataError(f"Expected data file {str(path)!r} is missing; check `data_dir` (`--data_dir`).")
    for _, row in read_jsonl(path):
        yield row


def _read_tsv(path: Path, text_column: str, label_column: str) -> Iterable[tuple[str, float]]:
    if not path.exists():
        raise DataError(f"Expected data file {str(path)!r} is missing; check `data_dir` (`--data_dir`).")
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        i, j = header.index(text_column), header.index(label_column)
        for line in f:
            cells = line.rstrip("\n").split("\t")
            yield cells[i], float(cells[j])


def _to_splits(rows: Iterable[tuple[str, list[float], str, str | None]], test_percent: float) -> DatasetDict:
    """(text, labels, source, split or None) rows → deduplicated DatasetDict; `None` splits go by `held_out`."""
    from datasets import Dataset, DatasetDict

    rows = list(rows)
    seen: dict[str, tuple] = {}
    # Rows of an official test split go first, so a text found in both is held out (and never trained on).
    for text, labels, source, split in sorted(rows, key=lambda row: row[3] != "test"):
        text = " ".join(text.split())
        if text and text not in seen:  # otherwise first occurrence wins: sources are listed in order of preference
            seen[text] = (labels, source, split or ("test" if held_out(text, test_percent) else "train"))
    splits = {"train": {"text": [], "labels": [], "source": []}, "test": {"text": [], "labels": [], "source": []}}
    for text, (labels, source, split) in seen.items():
        column = splits[split]
        column["text"].append(text)
        column["labels"].append([float(y) for y in labels])
        column["source"].append(source)
    return DatasetDict({name: Dataset.from_dict(columns) for name, columns in splits.items()})


def balance_classes(ds: Dataset, ratio: float = 1.0, threshold: float = 0.5, seed: int = 0) -> Dataset:
    """Oversample, within each `source`, the rarer class (label 0 ≥ `threshold` or not) to `ratio` × the other's count.

    Rows are repeated (drawn with a seeded generator), never dropped, so every text is still seen. It moves each
    source's label prior towards 0.5: ranking (AUC) gains on skewed sources, calibration (MSE) can lose.
    """
    from datasets import concatenate_datasets

    generator = torch.Generator().manual_seed(seed)
    positive = [row[0] >= threshold for row in ds["labels"]]
    sources = ds["source"] if "source" in ds.column_names else [""] * len(ds)
    rows: dict[tuple[str, bool], list[int]] = {}
    for i, key in enumerate(zip(sources, positive, strict=True)):
        rows.setdefault(key, []).append(i)
    extra: list[int] = []
    for source in sorted(set(sources)):
        small, large = sorted((rows.get((source, c), []) for c in (False, True)), key=len)
        missing = int(ratio * len(large)) - len(small)
        if small and missing > 0:
            picks = torch.randint(len(small), (missing,), generator=generator).tolist()
            extra += [small[i] for i in picks]
    return concatenate_datasets([ds, ds.select(extra)]) if extra else ds


# (sub-path, label field, label → score in [0, 1]); mapping as the toxicity folder's SOURCE.md suggests.
_OFFLINE_TOXICITY = {
    "civil_comments_toxic_spans": ("civil_comments_toxic_spans/civil_comments_toxic_spans.jsonl.gz", "toxicity", None),
    "jigsaw_toxic_comment": ("jigsaw_toxic_comment/airdecoding_jigsaw_10k.jsonl.gz", "toxic", None),
    "jigsaw_toxic_comment_subsets": ("jigsaw_toxic_comment/jaythibs_jigsaw_subsets.jsonl.gz", "toxic", None),
    "davidson_hate_offensive": ("davidson_hate_offensive/labeled_data.jsonl.gz", "frac_hate_or_offensive", None),
    "tweeteval_offensive": ("tweeteval_offensive/{split}", "label", None),
    "tweeteval_hate": ("tweeteval_hate/{split}", "label", None),
    "ruddit": ("ruddit/ruddit_with_text.jsonl.gz", "offensiveness_score", lambda s: (s + 1) / 2),
}


def _split_file(folder: Path, name: str) -> Path:
    for candidate in (folder / f"{name}.jsonl.gz", folder / f"{name}.jsonl"):
        if candidate.exists():
            return candidate
    raise DataError(f"Expected {folder}/{name}.jsonl[.gz]; check `data_dir` (`--data_dir`).")


def load_toxicity(
    source: str = "offline",
    data_dir: str | os.PathLike | None = None,
    *,
    jigsaw_dir: str | os.PathLike | None = None,
    test_percent: float = 5.0,
) -> DatasetDict:
    """Toxicity-labelled text.

    Args:
        source: `"offline"` — the labelled corpora under `<data_dir>/toxicity/` mapped to one `toxicity` score
            (Civil Comments toxic spans, Jigsaw Toxic Comment, Davidson, TweetEval offensive/hate, Ruddit),
            deduplicated, with their own test splits where they have one (TweetEval) and a hash split otherwise;
            `"jigsaw"` — the Kaggle Jigsaw Unintended Bias CSVs in `jigsaw_dir` (`train.csv`, and
            `test_public_expanded.csv` as the test split when present), the 7 attributes;
            `"civil_comments"` — the Hub's `google/civil_comments` (needs the network), the 7 attributes.
        data_dir: the offline data folder (else `$RAD_Q_HF_DATA`).
        test_percent: size of the hash-based held-out split, in percent.

    Returns: `DatasetDict(train, test)` with `text`, `labels`, `source`; the label names are
    `["toxicity"]` offline and `JIGSAW_ATTRIBUTES` otherwise (see `toxicity_label_names`).
    """
    from datasets import DatasetDict, load_dataset

    if source == "offline":
        return _to_splits(_offline_toxicity_rows(resolve_data_dir(data_dir) / "toxicity"), test_percent)
    if source == "jigsaw":
        return _jigsaw_csv(jigsaw_dir)
    if source == "civil_comments":
        ds = load_dataset("google/civil_comments")
        return DatasetDict({"train": _civil(ds["train"]), "test": _civil(ds["test"])})
    raise DataError(f"Unknown toxicity source {source!r}; choose one of 'offline', 'jigsaw', 'civil_comments'.")


def toxicity_label_names(source: str) -> list[str]:
    return ["toxicity"] if source == "offline" else list(JIGSAW_ATTRIBUTES)


def _offline_toxicity_rows(folder: Path):
    for name, (sub_path, field, to_score) in _OFFLINE_TOXICITY.items():
        if "{split}" in sub_path:  # TweetEval ships train/val/test: val trains, test is held out
            parts = [("train", "train"), ("val", "train"), ("test", "test")]
            files = [(_split_file(folder / sub_path.split("/")[0], part), split) for part, split in parts]
        else:
            files = [(folder / sub_path, None)]
        for path, split in files:
            for row in _read_jsonl(path):
                score = float(row[field])
                yield row["text"], [to_score(score) if to_score else score], name, split


def _jigsaw_csv(jigsaw_dir) -> DatasetDict:
    from datasets import DatasetDict, load_dataset

    if jigsaw_dir is None:
        raise DataError("`source='jigsaw'` needs `jigsaw_dir` (`--jigsaw_dir`): the folder with Kaggle's train.csv.")
    folder = Path(jigsaw_dir)
    train = folder / "train.csv"
    if not train.exists():
        raise DataError(f"{str(train)!r} does not exist; `--jigsaw_dir` must hold the Jigsaw Unintended Bias CSVs.")
    files = {"train": str(train)}
    if (folder / "test_public_expanded.csv").exists():
        files["test"] = str(folder / "test_public_expanded.csv")
    # One builder per file: train.csv calls the score `target`, the test CSVs `toxicity` (different schemas).
    raw = {split: load_dataset("csv", data_files=path, split="train") for split, path in files.items()}
    out = {}
    for split, ds in raw.items():
        score = "target" if "target" in ds.column_names else "toxicity"  # train.csv calls toxicity "target"
        columns = [score, *JIGSAW_ATTRIBUTES[1:]]
        _require_columns(ds, ["comment_text", *columns], f"{split} CSV")
        out[split] = ds.map(
            lambda batch, cols=columns: {
                "text": [t or "" for t in batch["comment_text"]],
                "labels": [list(v) for v in zip(*(batch[c] for c in cols), strict=True)],
                "source": ["jigsaw"] * len(batch["comment_text"]),
            },
            batched=True,
            remove_columns=ds.column_names,
        ).filter(lambda row: bool(row["text"].strip()))
    if "test" not in out:
        split = out["train"].train_test_split(test_size=0.05, seed=0)
        out = {"train": split["train"], "test": split["test"]}
    return DatasetDict(out)


def _civil(ds: Dataset) -> Dataset:
    _require_columns(ds, ["text", *JIGSAW_ATTRIBUTES], "google/civil_comments")
    return ds.map(
        lambda batch: {
            "labels": [list(v) for v in zip(*(batch[c] for c in JIGSAW_ATTRIBUTES), strict=True)],
            "source": ["civil_comments"] * len(batch["text"]),
        },
        batched=True,
        remove_columns=[c for c in ds.column_names if c != "text"],
    )


SENTIMENT_SOURCES = ("sst2", "amazon", "imdb", "hub:sst2", "hub:amazon_polarity")


def load_sentiment(source: str = "sst2", data_dir: str | os.PathLike | None = None, *, test_percent: float = 5.0):
    """Sentiment-labelled text with one label, `positive` (1.0 positive, 0.0 negative).

    Args:
        source: offline `"sst2"` (train / dev as test; the trailing space of SST-2 sentences is stripped),
            `"amazon"` (Blitzer et al.'s multi-domain Amazon reviews, title + body, hash split), `"imdb"` (its own
            train / test subsets); online `"hub:sst2"` (`stanfordnlp/sst2`, validation as test) and
            `"hub:amazon_polarity"` (`fancyzhx/amazon_polarity`), as in the papers.
        data_dir: the offline data folder (else `$RAD_Q_HF_DATA`).
    """
    from datasets import DatasetDict, load_dataset

    if source == "sst2":
        folder = resolve_data_dir(data_dir) / "sst2"
        rows = [
            (t, [y], "sst2", s)
            for s in ("train", "test")
            for t, y in _read_tsv(folder / ("train.tsv" if s == "train" else "dev.tsv"), "sentence", "label")
        ]
        return _to_splits(rows, test_percent)
    if source == "amazon":
        path = resolve_data_dir(data_dir) / "amazon_reviews" / "blitzer_multidomain_labeled.jsonl.gz"
        rows = ((f"{r['title']}. {r['text']}", [r["label"]], "amazon", None) for r in _read_jsonl(path))
        return _to_splits(rows, test_percent)
    if source == "imdb":
        folder = resolve_data_dir(data_dir) / "imdb"
        rows = [
            (r["text"].replace("<br />", " "), [r["label"]], "imdb", split)
            for split in ("train", "test")
            for r in _read_jsonl(folder / f"{split}_subset.jsonl.gz")
        ]
        return _to_splits(rows, test_percent)
    if source == "hub:sst2":
        ds = load_dataset("stanfordnlp/sst2")
        return DatasetDict(
            {
                "train": _hub_sentiment(ds["train"], "sentence", "sst2"),
                "test": _hub_sentiment(ds["validation"], "sentence", "sst2"),
            }
        )
    if source == "hub:amazon_polarity":
        ds = load_dataset("fancyzhx/amazon_polarity")
        return DatasetDict({s: _hub_sentiment(ds[s], "content", "amazon_polarity") for s in ("train", "test")})
    raise DataError(f"Unknown sentiment source {source!r}; choose one of {', '.join(SENTIMENT_SOURCES)}.")


def _hub_sentiment(ds: Dataset, text_column: str, source: str) -> Dataset:
    _require_columns(ds, [text_column, "label"], source)
    return ds.map(
        lambda batch: {
            "text": [t.strip() for t in batch[text_column]],
            "labels": [[float(y)] for y in batch["label"]],
            "source": [source] * len(batch["label"]),
        },
        batched=True,
        remove_columns=ds.column_names,
    )


def load_labelled_file(
    path: str | os.PathLike, text_column: str = "text", label_columns: Sequence[str] = ("label",)
) -> Dataset:
    """A JSON(L) / CSV / TSV / Parquet file of your own as a `text` + `labels` dataset (labels taken in order)."""
    from datasets import load_dataset

    path = Path(path)
    if not path.exists():
        raise DataError(f"Dataset file {str(path)!r} does not exist.")
    suffix = path.suffixes[0] if path.suffix == ".gz" else path.suffix
    kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}.get(suffix)
    if kind is None:
        raise DataError(f"Cannot read {str(path)!r}: use a .jsonl, .json, .csv, .tsv or .parquet file.")
    extra = {"delimiter": "\t"} if suffix == ".tsv" else {}
    ds = load_dataset(kind, data_files=str(path), split="train", **extra)
    _require_columns(ds, [text_column, *label_columns], str(path))
    return ds.map(
        lambda batch: {
            "text": batch[text_column],
            "labels": [[float(v) for v in row] for row in zip(*(batch[c] for c in label_columns), strict=True)],
        },
        batched=True,
        remove_columns=ds.column_names,
    )


def _require_columns(ds: Dataset, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"{what} lacks the column(s) {missing}; it has {ds.column_names}.")


def check_label_range(labels: torch.Tensor, name: str = "") -> None:
    """Refuse labels (N, L) outside [0, 1] or NaN: RAD regresses probabilities, and decoding clamps rewards to [0, 1],
    so 1-5 stars or ±1 labels would train a model whose rewards steer wrongly without a word."""
    bad = ((labels < 0) | (labels > 1) | labels.isnan()).any(-1).nonzero().flatten()
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{len(bad)} row(s){' of ' + name if name else ''} have labels outside [0, 1], e.g. row {i}: "
            f"{labels[i].tolist()}. Rescale them to [0, 1] (RAD regresses probabilities / annotator fractions)."
        )


def validate(ds: Dataset, num_labels: int | None = None) -> None:
    """Check a `text` + `labels` dataset: both columns present, no empty text, `num_labels` floats in [0, 1] each."""
    _require_columns(ds, ["text", "labels"], "The dataset")
    labels = torch.tensor(ds["labels"], dtype=torch.float64) if len(ds) else torch.zeros(0, num_labels or 1)
    if labels.dim() == 1:
        raise DataError("`labels` must hold a list of floats per row (one per reward output), e.g. [0.7].")
    if num_labels is not None and labels.shape[1] != num_labels:
        raise DataError(f"Rows have {labels.shape[1]} labels but the reward model has {num_labels} outputs.")
    check_label_range(labels)
    empty = [i for i, t in enumerate(ds["text"]) if not isinstance(t, str) or not t.strip()]
    if empty:
        raise DataError(f"{len(empty)} row(s) have empty text, e.g. row {empty[0]}; drop them before training.")


def tokenize(ds: Dataset, tokenizer, max_length: int = 128, num_labels: int | None = None) -> Dataset:
    """Validate, then tokenize `text` into `input_ids` (no special tokens, truncated to `max_length`); keeps `labels`.

    RAD-Q's trainer puts BOS in front itself, so one tokenized dataset serves both methods.
    """
    validate(ds, num_labels)
    if len(ds) == 0:
        raise DataError("The dataset has no rows; check the data source, the split and `max_*_samples`.")
    return ds.map(
        lambda batch: {
            "input_ids": tokenizer(batch["text"], add_special_tokens=False, truncation=True, max_length=max_length)[
                "input_ids"
            ]
        },
        batched=True,
        remove_columns=[c for c in ds.column_names if c != "labels"],
    ).filter(lambda row: len(row["input_ids"]) > 0)


@dataclass
class RewardDataCollator(DataCollatorMixin):
    """Right-pads `input_ids` and stacks `labels`.

    Returns `input_ids` (B, T) long, `attention_mask` (B, T) long and, when rows have them, `labels`
    (B, n_labels) float32. Any padding side would do (`rad_q_hf.scoring` is padding-side agnostic).

    Why not transformers' `DataCollatorWithPadding`, which gives the same tensors (tested): it pads through a
    tokenizer (`tokenizer.pad`), while the trainers build this collator from the reward model's pad id alone (data
    are often tokenized elsewhere and no tokenizer reaches the trainer); and it would turn an empty row or a bare-number
    label into a tensor without a word, where this one stops with a `DataError` that names the fix.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, features: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(f["input_ids"]) for f in features]
        if min(lengths) == 0:
            raise DataError("A row has no tokens; drop empty texts before training.")
        T = max(lengths)
        if self.pad_to_multiple_of:
            T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(features), T), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), T), dtype=torch.long)
        for i, f in enumerate(features):
            input_ids[i, : lengths[i]] = torch.as_tensor(f["input_ids"])
            attention_mask[i, : lengths[i]] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "labels" in features[0]:  # distillation data has none: the teacher gives the targets
            batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.float32)  # (B, L)
            if batch["labels"].dim() != 2:
                raise DataError("`labels` must be a list of floats per row, e.g. [0.7] — not a bare number.")
        return batch


__all__ = [
    "DATA_ENV",
    "JIGSAW_ATTRIBUTES",
    "SENTIMENT_SOURCES",
    "min_words",
    "DataError",
    "RewardDataCollator",
    "balance_classes",
    "resolve_data_dir",
    "held_out",
    "load_labelled_file",
    "load_sentiment",
    "load_toxicity",
    "tokenize",
    "toxicity_label_names",
    "validate",
    "with_validation",
]
