"""Held-out quality of a reward model, per source: accuracy, MSE, label variance and ROC AUC, next to a baseline.

    quality = held_out_quality(model, tokenizer, load_toxicity("offline", data_dir)["test"], baseline="profanity-check")
    quality["all"]["auc"], quality["all"]["baseline_auc"]

Each text's reward is the model's output 0 at its last token (unclamped). Accuracy thresholds prediction and label at
0.5; ROC AUC counts labels ≥ 0.5 as positive (continuous-label sources are binarised there, their MSE is not); a model
that predicts a source's mean label scores an MSE equal to that source's label variance. The baseline is a toxicity
judge (`alt-profanity-check` by default) scored on the same texts.
"""

from collections.abc import Sequence

import numpy as np

from ..scoring import text_rewards
from ..training.reward_trainer import roc_auc
from .judges import toxicity_judge

ALL = "all"
DEFAULT_BASELINE = "profanity-check"


def group_metrics(pred: np.ndarray, label: np.ndarray, baseline: np.ndarray | None = None) -> dict[str, float]:
    """n, accuracy at 0.5, MSE, label variance and ROC AUC of one group; `baseline_auc` when `baseline` is given."""
    out = {
        "n": len(label),
        "accuracy": float(np.mean((pred >= 0.5) == (label >= 0.5))),
        "mse": float(np.mean((pred - label) ** 2)),
        "label_variance": float(np.var(label)),
        "auc": roc_auc(pred, label),
    }
    if baseline is not None:
        out["baseline_auc"] = roc_auc(baseline, label)
    return out


def source_metrics(
    pred: Sequence[float], labels: Sequence[float], sources: Sequence[str], baseline: Sequence[float] | None = None
) -> dict[str, dict]:
    """`group_metrics` per source (sorted by name), then over all texts under `"all"`."""
    pred, labels = np.asarray(pred, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    base = None if baseline is None else np.asarray(baseline, dtype=np.float64)
    sources = np.asarray(sources)
    out = {}
    for source in [*sorted(set(sources.tolist())), ALL]:
        idx = np.ones(len(sources), bool) if source == ALL else sources == source
        out[source] = group_metrics(pred[idx], labels[idx], None if base is None else base[idx])
    return out


def held_out_quality(
    model,
    tokenizer,
    ds,
    max_length: int = 128,
    baseline: str | None = None,
    batch_size: int = 32,
    baseline_sees_truncated: bool = False,
) -> dict[str, dict]:
    """`source_metrics` of the model on a `text` / `labels` (/ `source`) dataset, with a judge's AUC as baseline.

    `baseline` names a toxicity judge of `rad_q_hf.evaluation.judges` (e.g. `"profanity-check"`); `None` skips it.
    The judge reads each whole text, or with `baseline_sees_truncated` only the `max_length` tokens the model reads
    (decoded back to text), so that the two rank the same information.
    """
    texts, labels = list(ds["text"]), [row[0] for row in ds["labels"]]
    sources = ds["source"] if "source" in ds.column_names else [ALL] * len(texts)
    model.eval()
    pred = text_rewards(model, tokenizer, texts, batch_size, max_length)[:, 0].float().cpu().numpy()
    judged = truncated_texts(tokenizer, texts, max_length) if baseline_sees_truncated else texts
    scores = toxicity_judge(baseline).score(judged) if baseline else None
    metrics = source_metrics(pred, labels, sources, scores)
    if baseline:
        metrics[ALL]["baseline"] = baseline
    return metrics


def paired_accuracy(pred_a: Sequence[float], pred_b: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
    """Accuracy of model a minus model b on the same texts (threshold 0.5), with its paired standard error.

    Per text d = [a right] − [b right]; the difference is mean(d) and its standard error std(d, ddof=1) / sqrt(n),
    so texts both models get right or wrong add no noise. `only_a` / `only_b` count the texts one model alone gets
    right (McNemar's discordant pairs).

    >>> paired_accuracy([0.9, 0.2, 0.8, 0.1], [0.9, 0.7, 0.3, 0.6], [1, 0, 1, 0])["difference"]
    0.75
    """
    label = np.asarray(labels, dtype=np.float64) >= 0.5
    right_a = (np.asarray(pred_a, dtype=np.float64) >= 0.5) == label
    right_b = (np.asarray(pred_b, dtype=np.float64) >= 0.5) == label
    d = right_a.astype(np.float64) - right_b
    se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {
        "n": len(d),
        "difference": float(d.mean()),
        "standard_error": se,
        "only_a": int((d > 0).sum()),
        "only_b": int((d < 0).sum()),
    }


def truncated_texts(tokenizer, texts: list[str], max_length: int | None) -> list[str]:
    """Each text cut to the first `max_length` tokens as `text_rewards` tokenizes it, decoded back to a string."""
    if max_length is None:
        return list(texts)
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


__all__ = [
    "ALL",
    "DEFAULT_BASELINE",
    "group_metrics",
    "held_out_quality",
    "paired_accuracy",
    "source_metrics",
    "truncated_texts",
]
