"""The papers' evaluation metrics (METHOD.md §8), as plain functions of per-prompt lists.

Every function takes one list per prompt (that prompt's samples), so the per-prompt structure of the protocol
(max over a prompt's samples, dist-n within a prompt) cannot be lost by flattening.
"""

import math
import statistics
import warnings

import torch
from tqdm.auto import tqdm


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _sem(values: list[float]) -> float:
    """Standard error of the mean over prompts (sample standard deviation / √n)."""
    if len(values) < 2:
        return math.nan
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def toxicity_metrics(scores: list[list[float]], threshold: float = 0.5) -> dict:
    """Average maximum toxicity and toxic rate.

    `scores[i]` are the toxicity scores of prompt i's samples. Per prompt the maximum is taken over its scored
    samples (NaN = the judge could not score it, ignored); prompts without any score are left out.

    `avg_max_toxicity_se` is the standard error over prompts.

    >>> toxicity_metrics([[0.25, 0.75], [0.25, float("nan")], [float("nan")]])
    {'avg_max_toxicity': 0.5, 'avg_max_toxicity_se': 0.25, 'toxic_rate': 0.5, 'num_prompts_scored': 2}
    """
    maxima = [max(s for s in row if not math.isnan(s)) for row in scores if any(not math.isnan(s) for s in row)]
    return {
        "avg_max_toxicity": _mean(maxima),
        "avg_max_toxicity_se": _sem(maxima),
        "toxic_rate": _mean([float(m >= threshold) for m in maxima]),  # ≥ 1 sample at or above the threshold
        "num_prompts_scored": len(maxima),
    }


def sentiment_metrics(labels: list[list[str]]) -> dict:
    """Positive rate: the mean over prompts of the fraction of a prompt's samples labelled POSITIVE.

    Also the negative rate (the same with NEGATIVE), which differs from 1 − positive rate for judges that can say
    NEUTRAL (VADER).

    >>> sentiment_metrics([["POSITIVE", "NEGATIVE"], ["POSITIVE", "POSITIVE", "NEUTRAL", "NEGATIVE"]])
    {'positive_rate': 0.5, 'positive_rate_se': 0.0, 'negative_rate': 0.375}
    """
    rows = [row for row in labels if row]
    positive = [sum(label == "POSITIVE" for label in row) / len(row) for row in rows]
    return {
        "positive_rate": _mean(positive),
        "positive_rate_se": _sem(positive),
        "negative_rate": _mean([sum(label == "NEGATIVE" for label in row) / len(row) for row in rows]),
    }


def distinct_n(continuations: list[list[str]], ns: tuple[int, ...] = (1, 2, 3)) -> dict:
    """dist-n as DExperts defines it, averaged over prompts.

    Per prompt, over its continuations split on whitespace: the number of distinct n-grams (n-grams do not cross
    continuations) divided by the total number of words; the denominator is the same for every n. Prompts whose
    continuations have no words at all are left out.

    >>> distinct_n([["a b a", "a b"]])  # 5 words; unigrams {a, b}; bigrams {a b, b a}; trigrams {a b a}
    {'dist-1': 0.4, 'dist-2': 0.4, 'dist-3': 0.2}
    """
    per_n: dict[int, list[float]] = {n: [] for n in ns}
    for row in continuations:
        words = [text.split() for text in row]
        total = sum(len(w) for w in words)
        if total == 0:
            continue
        for n in ns:
            grams = {tuple(w[i : i + n]) for w in words for i in range(len(w) - n + 1)}
            per_n[n].append(len(grams) / total)
    return {f"dist-{n}": _mean(values) for n, values in per_n.items()}


def prompt_maxima(scores: list[list[float]]) -> list[float]:
    """Per prompt, the maximum of its scored samples (NaN when none was scored)."""
    return [max((s for s in row if not math.isnan(s)), default=math.nan) for row in scores]


def prompt_positive_fractions(labels: list[list[str]]) -> list[float]:
    return [sum(label == "POSITIVE" for label in row) / len(row) if row else math.nan for row in labels]


def paired_difference(a: list[float], b: list[float]) -> dict:
    """Mean of per-prompt differences a − b over the prompts both score, with its standard error: two methods run
    on the same prompts, so the pairing removes the prompt-to-prompt variation.

    >>> paired_difference([0.5, 0.25, float("nan")], [0.25, 0.25, 0.75])
    {'mean_difference': 0.125, 'se': 0.125, 'num_prompts': 2}
    """
    d = [x - y for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]
    return {"mean_difference": _mean(d), "se": _sem(d), "num_prompts": len(d)}


def interpolate_log_x(curve: list[tuple[float, float]], x: float) -> float:
    """y at `x` on the piecewise-linear curve through the (x, y) points of `curve`, linear in log x (perplexity is
    a ratio scale); NaN outside the curve's x range.

    >>> round(interpolate_log_x([(40.0, 0.1), (10.0, 0.4)], 20.0), 6)
    0.25
    >>> interpolate_log_x([(10.0, 0.4), (40.0, 0.1)], 50.0)
    nan
    >>> interpolate_log_x([(10.0, 0.4), (float("nan"), 0.2), (40.0, 0.1)], 20.0)
    nan
    """
    if math.isnan(x) or not curve or any(math.isnan(v) for point in curve for v in point):
        return math.nan  # a point without a value (all its perplexities dropped) leaves no curve to read
    pts = sorted(curve)
    if len(pts) == 1:
        return pts[0][1] if pts[0][0] == x else math.nan
    lx = math.log(x)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        l0, l1 = math.log(x0), math.log(x1)
        if l0 <= lx <= l1:
            return y0 if l1 == l0 else y0 + (y1 - y0) * (lx - l0) / (l1 - l0)
    return math.nan


def frontier_differences(
    points: dict[str, tuple[list[float], list[list[float]]]],
    a: list[str],
    b: list[str],
    num_resamples: int = 1000,
    seed: int = 0,
    max_perplexity: float = 1e5,
) -> dict[str, dict]:
    """Each setting of `a` against the trade-off curve of the settings `b` at equal fluency, with a bootstrap SE.

    A setting is a point (median sample perplexity, mean per-prompt value); b's points (e.g. unguided and one
    method's βs), joined in order of perplexity, make a curve, linear in log perplexity. The difference is a's value
    minus the curve's value at a's median perplexity: NaN where that perplexity lies outside b's range. Its standard
    error resamples the prompts (the same resample for every setting, which share them) `num_resamples` times and
    recomputes everything; resamples that put a outside b's range are left out (`resamples_in_range` says how many
    were kept: well below 1, the SE is optimistic).

    points: {setting: (per-prompt values (P,), per-prompt lists of sample perplexities)}; perplexities ≥
    `max_perplexity` or NaN are dropped, as in `perplexity_metrics`. Returns {setting of a: {"difference", "se",
    "perplexity_median", "num_prompts", "resamples_in_range"}}.

    >>> flat = [[20.0, 20.0]] * 4  # every sample at perplexity 20
    >>> pts = {"u": ([0.4] * 4, [[10.0, 10.0]] * 4), "b": ([0.1] * 4, [[40.0, 40.0]] * 4), "a": ([0.2] * 4, flat)}
    >>> d = frontier_differences(pts, ["a"], ["u", "b"], num_resamples=50)["a"]
    >>> round(d["difference"], 6), round(d["se"], 6), d["perplexity_median"]
    (-0.05, 0.0, 20.0)
    """
    import numpy as np

    names = list(dict.fromkeys([*a, *b]))
    values = {n: np.asarray(points[n][0], dtype=float) for n in names}  # (P,)
    num_prompts = len(values[names[0]])
    if not num_prompts or any(len(values[n]) != num_prompts or len(points[n][1]) != num_prompts for n in names):
        raise ValueError(f"Every setting needs values and perplexities for the same prompts (> 0): {list(names)}.")
    width = max(len(row) for n in names for row in points[n][1])
    ppl = {}
    for n in names:
        m = np.full((num_prompts, width), np.nan)  # (P, S) ragged rows padded with NaN
        for i, row in enumerate(points[n][1]):
            m[i, : len(row)] = row
        ppl[n] = np.where(m < max_perplexity, m, np.nan)

    def differences(idx) -> tuple[dict, dict]:
        at = {n: (float(np.nanmedian(ppl[n][idx])), float(np.nanmean(values[n][idx]))) for n in names}
        curve = [at[n] for n in b]
        return {n: at[n][1] - interpolate_log_x(curve, at[n][0]) for n in a}, at

    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():  # a setting without any kept perplexity: NaN, said once by the result
        warnings.simplefilter("ignore", RuntimeWarning)
        point, at = differences(np.arange(num_prompts))
        resampled = [differences(rng.integers(0, num_prompts, num_prompts))[0] for _ in range(num_resamples)]
    out = {}
    for n in a:
        reps = np.array([r[n] for r in resampled])
        reps = reps[~np.isnan(reps)]
        out[n] = {
            "difference": point[n],
            "se": float(reps.std(ddof=1)) if len(reps) > 1 else math.nan,
            "perplexity_median": at[n][0],
            "num_prompts": num_prompts,
            "resamples_in_range": len(reps) / num_resamples,
        }
    return out


def perplexity_metrics(perplexities: list[list[float]], max_perplexity: float = 1e5) -> dict:
    """Mean conditional perplexity over all samples (the papers' statistic), dropping values ≥ `max_perplexity` (and
    NaN) first, and the median: a few near-impossible continuations (PPL in the thousands) move the mean by tens of
    percent, the median not.

    >>> perplexity_metrics([[10.0, 30.0], [2e5, float("nan")], [11.0]])
    {'perplexity': 17.0, 'perplexity_median': 11.0, 'perplexity_dropped': 2}
    """
    flat = [p for row in perplexities for p in row]
    kept = [p for p in flat if not math.isnan(p) and p < max_perplexity]
    median = statistics.median(kept) if kept else math.nan
    return {"perplexity": _mean(kept), "perplexity_median": median, "perplexity_dropped": len(flat) - len(kept)}


@torch.no_grad()
def sequence_nll(
    model, sequences: list[list[int]], batch_size: int = 32, last: list[int] | None = None, progress: str | None = None
) -> list[float]:
    """Summed negative log-likelihood of each token sequence: −Σ log p(x_t | x_<t) over its last `last[i]` tokens
    (default all but the first, which is given). `progress`: a tqdm bar with this description over the batches.

    Rows are left-padded (with explicit position ids) so that the scored tokens sit at the end of every row and the
    LM head runs only on the last max(last) + 1 positions: with a 262k vocabulary (Gemma 3) the head dominates.
    """
    device = next(model.parameters()).device
    last = [len(s) - 1 for s in sequences] if last is None else last
    out = [0.0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))  # similar lengths batch together
    for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=progress is None, unit="batch"):
        idx = [i for i in order[start : start + batch_size] if last[i] > 0]
        if not idx:
            continue
        width = max(len(sequences[i]) for i in idx)
        ids = torch.zeros(len(idx), width, dtype=torch.long)
        mask = torch.zeros(len(idx), width, dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(sequences[i]) :] = torch.tensor(sequences[i])
            mask[row, width - len(sequences[i]) :] = 1
        keep = max(last[i] for i in idx) + 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                       logits_to_keep=keep).logits[:, -keep:-1].float()  # (b, keep − 1, V)  # fmt: skip
        targets = ids[:, width - keep + 1 :].to(device)  # (b, keep − 1): the tokens those positions predict
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
        scored = (
            torch.arange(keep - 1, device=device)
            >= keep - 1 - torch.tensor([last[i] for i in idx], device=device)[:, None]
        )
        nll = -(logp * scored).sum(-1)  # (b,)
        for row, i in enumerate(idx):
            out[i] = nll[row].item()
    return out


def conditional_perplexity(
    model,
    tokenizer,
    prompts: list[str],
    continuations: list[list[str]],
    batch_size: int = 32,
    progress: str | None = None,
) -> list[list[float]]:
    """PPL = exp((NLL(prompt ⊕ continuation) − NLL(prompt)) / #continuation tokens) under a judge LM.

    `continuations[i]` are prompt i's samples. Both texts are tokenized the judge's usual way (its BOS included
    where its tokenizer adds one); #continuation tokens = len(tokens(prompt ⊕ cont)) − len(tokens(prompt)). Where
    the prompt's tokens are a prefix of the whole text's (almost always), the difference of NLLs is the NLL of the
    last #continuation tokens, computed from one forward; otherwise both NLLs are computed. An empty continuation
    gives NaN.
    """
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    seqs, last, plan = [], [], []  # plan: per sample, (index of its NLL, index of the prompt's NLL or None, n)
    for p_ids, p, row in zip(prompt_ids, prompts, continuations, strict=True):
        for c in row:
            ids = tokenizer(p + c)["input_ids"]
            n = len(ids) - len(p_ids)
            if ids[: len(p_ids)] == p_ids:
                plan.append((len(seqs), None, n))
                seqs.append(ids), last.append(max(n, 0))
            else:  # the boundary re-tokenized: NLL(prompt ⊕ cont) − NLL(prompt) in full
                plan.append((len(seqs), len(seqs) + 1, n))
                seqs += [ids, p_ids]
                last += [len(ids) - 1, len(p_ids) - 1]
    nll = sequence_nll(model, seqs, batch_size, last, progress)
    flat = []
    for full, prompt, n in plan:
        value = nll[full] - (nll[prompt] if prompt is not None else 0.0)
        flat.append(math.exp(min(value / n, 700.0)) if n > 0 else math.nan)
    return regroup(flat, [len(row) for row in continuations])


def regroup(flat: list, sizes: list[int]) -> list[list]:
    """Cut a flat list of per-sample values back into per-prompt lists of the given sizes."""
    out, start = [], 0
    for n in sizes:
        out.append(flat[start : start + n])
        start += n
    return out
