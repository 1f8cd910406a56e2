"""Judging a setting's samples (cached per setting while the judges stay the same) and its metrics.

scores/<setting>.json             per-sample judge outputs (NaN stored as null)

Besides the task's judge, every guided method's reward model scores every setting's samples (on the same text as
the judge: the continuation for toxicity, prompt + continuation for sentiment), so a sample that only fools the
reward model that steered it shows up as a gap between that model's column and the others' and the judge's.
"""

import json
import math
import sys
from pathlib import Path

from tqdm.auto import tqdm

from .config import EvaluationConfig, Setting
from .metrics import (
    distinct_n,
    frontier_differences,
    paired_difference,
    perplexity_metrics,
    prompt_maxima,
    prompt_positive_fractions,
    regroup,
    sentiment_metrics,
    toxicity_metrics,
)


class Judges:
    """The run's judges, loaded on first use (a re-run whose scores are cached loads none)."""

    def __init__(self, config: EvaluationConfig):
        self.config, self._cache = config, {}

    def names(self) -> dict:
        c = self.config
        kind = {"detox": {"toxicity": c.toxicity_judge}}.get(c.task, {"sentiment": c.sentiment_judge})
        reward_models = {m: c.reward_model_name(m) for m in c.methods if m != "none"}
        return {**kind, "fluency": c.fluency_lm} | ({"reward_models": reward_models} if reward_models else {})

    def identities(self) -> dict:
        """`names()` with each reward model named by its weights (`weights_fingerprint`): what stored scores are
        keyed by, so that a reward model retrained under the same name re-scores every setting's samples."""
        from .models import weights_fingerprint

        if "identities" not in self._cache:
            names = self.names()
            if "reward_models" in names:
                names["reward_models"] = {m: weights_fingerprint(n) for m, n in names["reward_models"].items()}
            self._cache["identities"] = names
        return self._cache["identities"]

    def reward_scores(self, method: str, texts: list[str]) -> list[float]:
        """`method`'s reward model's score of each text (its task label, clamped to [0, 1] as decoding uses it)."""
        from ..scoring import score_texts
        from .models import load_reward_model, load_tokenizer, reward_tokenizer, task_label

        key = f"reward:{method}"
        if key not in self._cache:
            name = self.config.reward_model_name(method)
            tqdm.write(f"loading the {method} reward model {name} as a judge", file=sys.stderr)
            model = load_reward_model(name, method, self.config.device)
            self._cache[key] = model, reward_tokenizer(model, load_tokenizer(self.config.lm))
        model, tokenizer = self._cache[key]
        return score_texts(model, tokenizer, texts, task_label(model, self.config.task))

    def get(self, kind: str):
        from .judges import fluency_judge, sentiment_judge, toxicity_judge

        if kind not in self._cache:
            tqdm.write(f"loading the {kind} judge {self.names()[kind]}", file=sys.stderr)
            make = {"toxicity": toxicity_judge, "sentiment": sentiment_judge, "fluency": fluency_judge}[kind]
            self._cache[kind] = make(self.names()[kind], self.config.device)
        return self._cache[kind]


def score_setting(setting: Setting, rows: list[dict], judges: Judges, output: str) -> dict:
    """Per-sample judge outputs for a setting, cached in `scores/<setting>.json` (NaN stored as null).

    Stored scores are reused per judge: a prompt whose samples are unchanged (same index, prompt and continuations)
    keeps the scores of every judge that is unchanged too (a reward model: the same weights, not only the same name).
    A run resumed with more prompts judges only the new ones; a run with another fluency judge re-judges only
    perplexity, and one without (`none`) leaves the stored file as it is, so that a later run with the judge back
    finds its scores.
    """
    path = Path(output) / "scores" / f"{setting.name}.json"
    prompts = [r["prompt"] for r in rows]
    conts = [r["continuations"] for r in rows]
    cached = json.loads(path.read_text()) if path.exists() else {"judges": {}, "prompts": [], "continuations": []}
    known = [
        i < len(cached["prompts"]) and cached["prompts"][i] == prompts[i] and cached["continuations"][i] == conts[i]
        for i in range(len(rows))
    ]
    old, now = _judge_of_key(cached["judges"]), _judge_of_key(judges.identities())
    same = {key for key in now if key in cached and old.get(key) == now[key]}  # reusable for the known prompts
    new_rows = [i for i in range(len(rows)) if not known[i]]
    fresh = {}
    for keys, todo in ((set(now) - same, range(len(rows))), (same, new_rows)):
        if keys and todo:
            judged = _judge(setting, [prompts[i] for i in todo], [conts[i] for i in todo], judges, keys)
            fresh.update({key: dict(zip(todo, judged[key], strict=True)) for key in keys})
    scores = {"judges": judges.identities(), "prompts": prompts, "continuations": conts}
    for key in now:
        scores[key] = [fresh[key][i] if i in fresh.get(key, {}) else cached[key][i] for i in range(len(rows))]
    scores = _nan_to_null(scores)
    if fresh or len(cached["prompts"]) != len(rows):  # not when a judge was only left out: its scores stay stored
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(scores) + "\n")
    return scores


def _judge_of_key(names: dict) -> dict[str, str]:
    """{score key: the judge that fills it} for a `Judges.names()` dict."""
    keys = {kind: names[kind] for kind in ("toxicity", "sentiment") if kind in names}
    keys |= {f"rm_{method}": name for method, name in names.get("reward_models", {}).items()}
    return keys | ({"perplexity": names["fluency"]} if names.get("fluency", "none") != "none" else {})


def _judge(setting: Setting, prompts: list[str], conts: list[list[str]], judges: Judges, keys: set[str]) -> dict:
    """{key: per-prompt lists of per-sample scores} for these prompts' samples, for the score `keys` asked."""
    sizes = [len(c) for c in conts]
    flat = [c for row in conts for c in row]
    whole = [p + c for p, row in zip(prompts, conts, strict=True) for c in row]
    names, scores = judges.names(), {}
    if "toxicity" in keys:  # the continuation alone is scored, as DExperts / RAD do
        tqdm.write(f"{setting.name}: toxicity of {len(flat)} samples", file=sys.stderr)
        scores["toxicity"] = regroup(judges.get("toxicity").score(flat), sizes)
    if "sentiment" in keys:  # prompt + continuation, as the papers do
        tqdm.write(f"{setting.name}: sentiment of {len(flat)} samples", file=sys.stderr)
        scores["sentiment"] = regroup(judges.get("sentiment").classify(whole), sizes)
    judged = flat if "toxicity" in names else whole
    for method in names.get("reward_models", {}):  # on the judge's text (see the module docstring)
        if f"rm_{method}" in keys:
            tqdm.write(f"{setting.name}: {method} reward model's score of {len(flat)} samples", file=sys.stderr)
            scores[f"rm_{method}"] = regroup(judges.reward_scores(method, judged), sizes)
    if "perplexity" in keys:
        fluency = judges.get("fluency")
        scores["perplexity"] = fluency.perplexities(prompts, conts, progress=f"{setting.name}: perplexity")
    return scores


def _nan_to_null(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_nan_to_null(v) for v in value]
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    return value


def null_to_nan(rows: list[list]) -> list[list[float]]:
    return [[math.nan if v is None else float(v) for v in row] for row in rows]


def setting_metrics(setting: Setting, rows: list[dict], scores: dict) -> dict:
    metrics = {"method": setting.method, "beta": setting.beta if setting.method != "none" else None,
               "num_prompts": len(rows), "num_samples": sum(len(r["continuations"]) for r in rows)}  # fmt: skip
    if "toxicity" in scores:
        metrics.update(toxicity_metrics(null_to_nan(scores["toxicity"])))
    if "sentiment" in scores:
        metrics.update(sentiment_metrics(scores["sentiment"]))
    if "perplexity" in scores:
        metrics.update(perplexity_metrics(null_to_nan(scores["perplexity"])))
    for key in (k for k in scores if k.startswith("rm_")):  # the task's statistic, by each reward model
        values = reward_model_statistic(null_to_nan(scores[key]), toxicity="toxicity" in scores)
        metrics[key], metrics[f"{key}_se"] = values["mean"], values["se"]
    metrics.update(distinct_n(scores["continuations"]))
    metrics["generation_seconds"] = sum(r["seconds"] for r in rows)
    return metrics


def reward_model_statistic(scores: list[list[float]], toxicity: bool) -> dict:
    """The task's per-prompt statistic from a reward model's scores: the max (toxicity) or the fraction ≥ 0.5
    (sentiment, as a positive label), averaged over prompts with its standard error. Unscored samples (NaN: a text
    with no token to score) are left out."""
    if toxicity:
        values = toxicity_metrics(scores)
        return {"mean": values["avg_max_toxicity"], "se": values["avg_max_toxicity_se"]}
    values = sentiment_metrics(
        [["POSITIVE" if s >= 0.5 else "NEGATIVE" for s in row if not math.isnan(s)] for row in scores]
    )
    return {"mean": values["positive_rate"], "se": values["positive_rate_se"]}


def per_prompt(scores: dict) -> list[float]:
    """The per-prompt value the paired comparison uses: max toxicity, or the fraction of positive samples."""
    if "toxicity" in scores:
        return prompt_maxima(null_to_nan(scores["toxicity"]))
    return prompt_positive_fractions(scores["sentiment"])


PAIRS = (("rad-q", "rad-v"), ("rad-q-trunk", "rad-q"), ("rad-q-trunk", "rad-v"))


def comparisons(config: EvaluationConfig, per_prompt_values: dict[str, list[float]]) -> dict:
    """Method a − method b at each β, paired over prompts, for the pairs of `PAIRS` that ran: RAD-Q − RAD-V (the
    paper's claim: on par at the same β), and the trunk kind against each."""
    out = {}
    for a, b in PAIRS:
        for beta in config.betas:
            x, y = Setting(a, float(beta)).name, Setting(b, float(beta)).name
            if x in per_prompt_values and y in per_prompt_values:
                difference = paired_difference(per_prompt_values[x], per_prompt_values[y])
                out[f"{x} − {y}"] = {"metric": config.metric, **difference}
    return out


def frontier_comparisons(
    config: EvaluationConfig, per_prompt_values: dict[str, list[float]], perplexities: dict[str, list[list[float]]]
) -> dict:
    """Method a at each β against method b's trade-off curve (unguided and b's βs, in order of median perplexity;
    linear in log perplexity) at a's own median perplexity, for the pairs of `PAIRS` (both ways) that ran with
    perplexity judged: the paper's "on par on the frontier", which equal β cannot answer when the two methods pay
    different perplexity for it."""
    out = {}
    for a, b in PAIRS + tuple((b, a) for a, b in PAIRS):  # both ways: each method's points on the other's curve
        xa = [Setting(a, float(beta)).name for beta in config.betas]
        xb = ["none"] + [Setting(b, float(beta)).name for beta in config.betas]
        if not all(n in per_prompt_values and n in perplexities for n in xa + xb):
            continue
        points = {n: (per_prompt_values[n], perplexities[n]) for n in xa + xb}
        for name, d in frontier_differences(points, xa, xb).items():
            out[f"{name} − {b} curve"] = {"metric": config.metric, **d}
    return out


__all__ = [
    "Judges",
    "comparisons",
    "frontier_comparisons",
    "null_to_nan",
    "per_prompt",
    "reward_model_statistic",
    "score_setting",
    "setting_metrics",
]
