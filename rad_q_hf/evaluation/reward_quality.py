"""Held-out quality of a reward model, per source: accuracy, MSE, label variance and ROC AUC, next to a baseline.

    quality = held_out_quality(model, tokenizer, load_toxicity("offline", data_dir)["test"], baseline="profanity-check")
    quality["all"]["auc"], quality["all"]["baseline_auc"]

Each text's reward is the model's output 0 at its last token (unclamped). Accuracy thresholds prediction and label at
0.5; ROC AUC counts labels ≥ 0.5 as positive (continuous-label sources are binarised there, their MSE is not); a model
that predicts a source's mean label scores an MSE equal to that source's label variance. The baseline is a toxicity
judge (`alt-profanity-check` by default) scored on the same texts; the model's AUC minus the baseline's comes with
DeLong's paired standard error (`paired_auc`), so "beats the baseline on this source" can be told from noise.
"""

from collections.abc import Sequence

import numpy as np

from ..scoring import text_rewards
from ..training.reward_trainer import midranks, roc_auc
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
        paired = paired_auc(pred, baseline, label)
        out["baseline_auc"] = paired["auc_b"]
        out["auc_minus_baseline"], out["auc_minus_baseline_se"] = paired["difference"], paired["standard_error"]
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
    pred = held_out_predictions(model, tokenizer, ds, max_length, batch_size)
    return quality_of_predictions(pred, ds, tokenizer, max_length, baseline, baseline_sees_truncated)


def held_out_predictions(model, tokenizer, ds, max_length: int = 128, batch_size: int = 32) -> np.ndarray:
    """The model's reward (output 0, unclamped) of each `text` of `ds`, read up to `max_length` tokens: shape (N,)."""
    model.eval()
    rewards = text_rewards(model, tokenizer, list(ds["text"]), batch_size, max_length, progress=True)
    return rewards[:, 0].float().cpu().numpy()


def quality_of_predictions(
    pred: Sequence[float],
    ds,
    tokenizer=None,
    max_length: int | None = None,
    baseline: str | None = None,
    baseline_sees_truncated: bool = False,
) -> dict[str, dict]:
    """`held_out_quality` of predictions already made (`held_out_predictions`), so that several comparisons can share
    one pass of the model; `tokenizer` and `max_length` are needed only for `baseline_sees_truncated`."""
    texts, labels = list(ds["text"]), [row[0] for row in ds["labels"]]
    if len(pred) != len(texts):
        raise ValueError(f"{len(pred)} predictions for {len(texts)} texts: predict on this very dataset.")
    sources = ds["source"] if "source" in ds.column_names else [ALL] * len(texts)
    if baseline_sees_truncated and (tokenizer is None or max_length is None):
        raise ValueError("`baseline_sees_truncated` needs the model's `tokenizer` and `max_length` to cut the texts.")
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


def paired_auc(
    pred_a: Sequence[float], pred_b: Sequence[float], labels: Sequence[float], threshold: float = 0.5
) -> dict[str, float]:
    """ROC AUC of scorer a minus scorer b on the same texts, with DeLong's paired standard error.

    Each positive's placement is the fraction of negatives it outscores (ties one half), each negative's the fraction
    of positives that outscore it; AUC is the mean placement, and the two scorers' placements co-vary text by text
    (DeLong, DeLong & Clarke-Pearson 1988). Var(a − b) = Var_pos(Va − Vb) / m + Var_neg(Va − Vb) / n over the m
    positives' and n negatives' placements, so texts both scorers rank alike add no noise. NaN with one class or
    any NaN score, and a NaN standard error with fewer than two texts of a class.

    >>> r = paired_auc([0.9, 0.8, 0.3, 0.1], [0.9, 0.2, 0.3, 0.1], [1, 1, 0, 0])
    >>> r["auc_a"], r["auc_b"], r["difference"]
    (1.0, 0.75, 0.25)
    """
    y = np.asarray(labels, dtype=np.float64) >= threshold
    m, n = int(y.sum()), int((~y).sum())
    nan = float("nan")
    scorers = np.asarray(pred_a, dtype=np.float64), np.asarray(pred_b, dtype=np.float64)
    if m == 0 or n == 0 or any(np.isnan(s).any() for s in scorers):
        return {"n_positive": m, "n_negative": n, "auc_a": nan, "auc_b": nan, "difference": nan, "standard_error": nan}
    pos, neg = [], []
    for s in scorers:
        # midranks: within all texts, within positives, within negatives (1-based, ties share their mean rank)
        all_ranks, pos_ranks, neg_ranks = midranks(s), midranks(s[y]), midranks(s[~y])
        pos.append((all_ranks[y] - pos_ranks) / n)  # (m,) negatives below each positive
        neg.append(1.0 - (all_ranks[~y] - neg_ranks) / m)  # (n,) positives above each negative
    auc_a, auc_b = float(pos[0].mean()), float(pos[1].mean())
    d_pos, d_neg = pos[0] - pos[1], neg[0] - neg[1]
    var = np.var(d_pos, ddof=1) / m + np.var(d_neg, ddof=1) / n if m > 1 and n > 1 else nan
    return {
        "n_positive": m,
        "n_negative": n,
        "auc_a": auc_a,
        "auc_b": auc_b,
        "difference": auc_a - auc_b,
        "standard_error": float(np.sqrt(var)),
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
    "held_out_predictions",
    "held_out_quality",
    "paired_accuracy",
    "paired_auc",
    "quality_of_predictions",
    "source_metrics",
    "truncated_texts",
]
