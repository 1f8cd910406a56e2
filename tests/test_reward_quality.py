"""Held-out quality metrics: ROC AUC, per-source grouping, the lexical baseline, cards and README tables."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import build_reward_model
from datasets import Dataset

from rad_q_hf.evaluation import reward_quality
from rad_q_hf.evaluation.reward_quality import (
    group_metrics,
    held_out_quality,
    paired_accuracy,
    paired_auc,
    quality_of_predictions,
    source_metrics,
    truncated_texts,
)
from rad_q_hf.model_card import auc_rows, per_source_table, replace_between, shipped_tables
from rad_q_hf.scoring import text_rewards
from rad_q_hf.training.reward_trainer import compute_reward_metrics, roc_auc


def test_roc_auc_hand_computed():
    # positives 0.35, 0.8; negatives 0.1, 0.4: 0.35 beats 0.1 only, 0.8 beats both -> 3 of 4 pairs
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # a tie between a positive and a negative counts one half: pairs (0.5 vs 0.5) = ½, (0.9 vs 0.5) = 1
    assert roc_auc([0.5, 0.5, 0.9], [0, 1, 1]) == 0.75
    # continuous labels are positive from 0.5 on: [0.2, 0.49] negative, [0.5, 0.9] positive
    assert roc_auc([0.9, 0.8, 0.1, 0.2], [0.2, 0.49, 0.5, 0.9]) == 0.0
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    assert math.isnan(roc_auc([0.1, math.nan, 0.9], [0, 1, 1]))  # a NaN prediction: no plausible AUC


def test_roc_auc_matches_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 10, 200) / 10  # many ties
    labels = rng.random(200)
    assert roc_auc(scores, labels) == pytest.approx(metrics.roc_auc_score(labels >= 0.5, scores))


def test_trainer_metrics_include_auc():
    from transformers import EvalPrediction

    out = compute_reward_metrics(
        EvalPrediction(np.array([[0.1], [0.4], [0.35], [0.8]]), np.array([[0], [0], [1], [1]]))
    )
    assert out["auc"] == 0.75 and out["accuracy"] == 0.75


def test_source_metrics_group_by_source_then_all():
    pred = [0.9, 0.2, 0.6, 0.1, 0.7]
    label = [1.0, 0.0, 0.3, 0.0, 0.8]
    sources = ["b", "b", "a", "a", "a"]
    base = [0.5, 0.6, 0.1, 0.2, 0.3]
    out = source_metrics(pred, label, sources, base)
    assert list(out) == ["a", "b", "all"]
    assert out["a"]["n"] == 3 and out["b"]["n"] == 2 and out["all"]["n"] == 5
    a = np.array([0, 1, 2]) + 2
    assert out["a"]["mse"] == pytest.approx(np.mean((np.array(pred)[a] - np.array(label)[a]) ** 2))
    assert out["a"]["label_variance"] == pytest.approx(np.var(np.array(label)[a]))
    assert out["a"]["auc"] == 1.0  # the one positive (0.8 -> pred 0.7) beats 0.6 and 0.1
    assert out["a"]["baseline_auc"] == 1.0 and out["b"]["baseline_auc"] == 0.0
    assert out["all"] == group_metrics(np.array(pred), np.array(label), np.array(base))


def test_held_out_quality_has_the_baseline_row(tokenizer):
    pytest.importorskip("profanity_check")
    model = build_reward_model("rad_v", "gpt2", len(tokenizer), labels=("toxicity",))
    texts = ["you idiot", "what a stupid idea", "the movie was great", "I love this place, it is lovely"]
    ds = Dataset.from_dict({"text": texts, "labels": [[1.0], [0.7], [0.0], [0.2]], "source": ["x", "x", "y", "y"]})
    out = held_out_quality(model, tokenizer, ds, baseline="profanity-check", batch_size=3)
    assert set(out) == {"x", "y", "all"} and out["all"]["baseline"] == "profanity-check"
    assert 0 <= out["all"]["baseline_auc"] <= 1 and math.isnan(out["x"]["auc"])  # x holds positives only
    pred = text_rewards(model, tokenizer, texts, batch_size=1)[:, 0].numpy()  # unpadded, one by one
    assert out["all"]["mse"] == pytest.approx(float(np.mean((pred - [1.0, 0.7, 0.0, 0.2]) ** 2)), rel=1e-5)
    with torch.no_grad():
        ids = tokenizer(texts[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
        assert pred[0] == pytest.approx(float(model(input_ids=ids).rewards[0, -1, 0]), rel=1e-5)


PER_SOURCE = {
    "ruddit": {"n": 10, "accuracy": 0.7, "mse": 0.02, "label_variance": 0.03, "auc": 0.8, "baseline_auc": 0.9},
    "all": {"n": 10, "accuracy": 0.7, "mse": 0.02, "label_variance": 0.03, "auc": 0.8, "baseline_auc": 0.9,
            "baseline": "profanity-check"},
}  # fmt: skip


def test_card_tables_show_auc_and_the_baseline_row():
    table = per_source_table(PER_SOURCE)
    assert "| ROC AUC | profanity-check ROC AUC (baseline) |" in table
    assert "| ruddit | 10 | 0.700 | 0.0200 | 0.0300 | 0.800 | 0.900 |" in table
    rows = auc_rows(PER_SOURCE)
    assert "| this model | 0.800 |" in rows and "| profanity-check (lexical baseline) | 0.900 |" in rows
    old = {k: {m: v for m, v in row.items() if "auc" not in m} for k, row in PER_SOURCE.items()}
    assert "AUC" not in per_source_table(old) and auc_rows(old) == ""  # older per_source.json files still render


def test_card_marks_the_baseline_rows_on_texts_it_was_trained_on():
    seen = {"davidson_hate_offensive": {**PER_SOURCE["ruddit"], "baseline_auc": 0.99}, **PER_SOURCE}
    table = per_source_table(seen)
    assert "| 0.800 | 0.990† |" in table and "| 0.800 | 0.900 |" in table  # Davidson marked, Ruddit not
    assert "† on texts profanity-check was trained on" in table and "§10" in table
    assert "†" not in per_source_table(PER_SOURCE)  # no row it has seen, no note
    other = {k: {**row, "baseline": "perspective"} for k, row in seen.items()}
    assert "†" not in per_source_table(other)  # only the baselines known to have seen held-out texts


def test_tables_show_the_paired_difference_to_the_baseline_where_measured():
    with_difference = {
        k: {**row, "auc_minus_baseline": -0.1, "auc_minus_baseline_se": 0.04} for k, row in PER_SOURCE.items()
    }
    assert "| 0.800 | 0.900 | -0.100 ± 0.040 |" in per_source_table(with_difference)
    assert "− baseline" not in per_source_table(PER_SOURCE)  # files without it still render, without the column
    text = shipped_tables({"rad-v-toxicity": {"per_source": with_difference, "delta_mb": 3.8},
                           "rad-q-toxicity": {"per_source": PER_SOURCE, "delta_mb": 4.4}})  # fmt: skip
    assert "| AUC rad-v-toxicity − baseline (± SE) |" in text and "rad-q-toxicity − baseline" not in text
    assert "| ruddit | 10 | 0.0300 | 0.0200 | 0.0200 | 0.800 | 0.800 | 0.900 | -0.100 ± 0.040 |" in text


def test_card_renders_auc(tmp_path):
    from rad_q_hf.model_card import render_card

    (tmp_path / "eval_results.json").write_text(json.dumps({"eval_accuracy": 0.7, "eval_mse": 0.1}))
    card = render_card("rad-v-x", tmp_path, task="detox", method="rad-v", data="D", command="C", hyperparameters="H",
                       num_layers=2, lora_r=4, delta_mb=1.0, per_source=PER_SOURCE)  # fmt: skip
    assert "profanity-check (lexical baseline) | 0.900" in card.content and "held-out texts (10)" in card.content


def test_readme_tables_from_per_source_files():
    sentiment = {k: {m: v for m, v in row.items() if "baseline" not in m} for k, row in PER_SOURCE.items()}
    text = shipped_tables(
        {
            "rad-v-toxicity": {"per_source": PER_SOURCE, "delta_mb": 3.8},
            "rad-q-toxicity": {"per_source": PER_SOURCE, "delta_mb": 4.4},
            "rad-v-sentiment": {"per_source": sentiment, "delta_mb": 7.5},
        }
    )
    assert "| `rad-v-toxicity` | RAD-V | 10 | 0.700 | 0.020 | 0.030 | 0.800 | 0.900 (profanity-check) | 3.8 |" in text
    assert "| `rad-v-sentiment` | RAD-V | 10 | 0.700 | 0.020 | 0.030 | 0.800 | – | 7.5 |" in text
    assert "| ruddit | 10 | 0.0300 | 0.0200 | 0.0200 | 0.800 | 0.800 | 0.900 |" in text
    filled = replace_between("a\n<!-- t -->\nold\n<!-- /t -->\nb", "t", "new")
    assert filled == "a\n<!-- t -->\nnew\n<!-- /t -->\nb"
    with pytest.raises(ValueError, match="no <!-- u -->"):
        replace_between(filled, "u", "x")


def test_truncated_texts_are_the_tokens_the_model_reads(tokenizer):
    texts = ["you idiot, what a stupid idea", "great", "I love this place, it is lovely"]
    cut = truncated_texts(tokenizer, texts, max_length=3)
    for text, short in zip(texts, cut, strict=True):
        ids = tokenizer(short, add_special_tokens=False)["input_ids"]
        full = tokenizer(text, add_special_tokens=False, truncation=True, max_length=3)["input_ids"]
        assert ids == full and text.startswith(short)  # byte-level BPE: a token prefix decodes to a text prefix
    assert cut[1] == "great" and len(cut[0]) < len(texts[0]) and truncated_texts(tokenizer, texts, None) == texts


@pytest.mark.parametrize("truncated", [False, True])
def test_baseline_reads_whole_or_truncated_texts(tokenizer, monkeypatch, truncated):
    seen = []

    class RecordingJudge:
        def score(self, texts):
            seen.append(list(texts))
            return [float(len(t)) for t in texts]

    monkeypatch.setattr(reward_quality, "toxicity_judge", lambda name: RecordingJudge())
    model = build_reward_model("rad_v", "gpt2", len(tokenizer), labels=("toxicity",))
    texts = ["you idiot, what a stupid idea", "great", "I love this place, it is lovely", "the movie was great"]
    ds = Dataset.from_dict({"text": texts, "labels": [[1.0], [0.0], [0.0], [1.0]]})
    out = held_out_quality(model, tokenizer, ds, max_length=3, baseline="x", baseline_sees_truncated=truncated)
    assert seen == [truncated_texts(tokenizer, texts, 3) if truncated else texts]
    assert out["all"]["baseline_auc"] == roc_auc(np.array([len(t) for t in seen[0]], float), [1, 0, 0, 1])


def test_paired_accuracy_hand_computed():
    # a right on all four; b right on 1 and 4 only -> d = [0, 1, 1, 0]
    out = paired_accuracy([0.9, 0.2, 0.8, 0.1], [0.9, 0.7, 0.3, 0.4], [1, 0, 1, 0])
    assert out["difference"] == 0.5 and out["only_a"] == 2 and out["only_b"] == 0
    assert out["standard_error"] == pytest.approx(np.std([0, 1, 1, 0], ddof=1) / 2)
    swapped = paired_accuracy([0.9, 0.7, 0.3, 0.4], [0.9, 0.2, 0.8, 0.1], [1, 0, 1, 0])
    assert swapped["difference"] == -0.5 and swapped["only_b"] == 2


def _delong_by_pairs(a, b, y):
    """DeLong's paired variance the slow way: the (positive × negative) kernel matrix of each scorer."""
    a, b, y = np.asarray(a, float), np.asarray(b, float), np.asarray(y) >= 0.5
    psi = [(s[y][:, None] > s[~y][None, :]) + 0.5 * (s[y][:, None] == s[~y][None, :]) for s in (a, b)]
    v10 = np.stack([k.mean(axis=1) for k in psi])  # (2, m) each positive's placement
    v01 = np.stack([k.mean(axis=0) for k in psi])  # (2, n) each negative's
    s10, s01 = np.cov(v10), np.cov(v01)  # (2, 2) covariances across texts, ddof 1
    contrast = np.array([1.0, -1.0])
    var = contrast @ s10 @ contrast / y.sum() + contrast @ s01 @ contrast / (~y).sum()
    return psi[0].mean() - psi[1].mean(), math.sqrt(var)


def test_paired_auc_matches_pairwise_delong_with_ties():
    rng = np.random.default_rng(3)
    labels = rng.random(120)
    a = np.round(labels + rng.normal(0, 0.4, 120), 1)  # rounded: many ties, within and across classes
    b = np.round(labels + rng.normal(0, 0.6, 120), 1)
    out = paired_auc(a, b, labels)
    difference, se = _delong_by_pairs(a, b, labels)
    assert out["auc_a"] == pytest.approx(roc_auc(a, labels)) and out["auc_b"] == pytest.approx(roc_auc(b, labels))
    assert out["difference"] == pytest.approx(difference) and out["standard_error"] == pytest.approx(se)
    assert out["n_positive"] + out["n_negative"] == 120
    swapped = paired_auc(b, a, labels)
    assert swapped["difference"] == pytest.approx(-difference) and swapped["standard_error"] == pytest.approx(se)
    same = paired_auc(a, a, labels)
    assert same["difference"] == 0 and same["standard_error"] == 0


def test_paired_auc_standard_error_matches_the_spread_over_samples():
    """Over many samples from one population, the AUC difference spreads as DeLong's standard error says."""
    rng = np.random.default_rng(0)
    differences, ses = [], []
    for _ in range(400):
        y = rng.random(150) < 0.4
        shared = rng.normal(0, 1, 150)  # both scorers see the same text difficulty: a positive correlation
        a = y + shared + rng.normal(0, 0.5, 150)
        b = y + shared + rng.normal(0, 1.0, 150)
        out = paired_auc(a, b, y.astype(float))
        differences.append(out["difference"])
        ses.append(out["standard_error"])
    assert np.mean(ses) == pytest.approx(np.std(differences), rel=0.15)


def test_paired_auc_with_one_class_or_one_text_of_a_class():
    out = paired_auc([0.1, 0.2], [0.3, 0.1], [1, 1])
    assert math.isnan(out["difference"]) and math.isnan(out["standard_error"])
    one = paired_auc([0.9, 0.1, 0.2], [0.1, 0.2, 0.3], [1, 0, 0])  # a single positive: AUC defined, SE not
    assert one["difference"] == 1.0 and math.isnan(one["standard_error"])
    for a_, b_ in (([0.9, math.nan, 0.2], [0.1, 0.2, 0.3]), ([0.9, 0.1, 0.2], [0.1, 0.2, math.nan])):
        out = paired_auc(a_, b_, [1, 0, 0])
        assert math.isnan(out["difference"]) and math.isnan(out["auc_a"]) and math.isnan(out["standard_error"])


def test_group_metrics_report_the_difference_to_the_baseline():
    pred, label, base = (
        np.array([0.9, 0.2, 0.6, 0.1, 0.7]),
        np.array([1.0, 0, 0.3, 0, 0.8]),
        np.array([0.5, 0.6, 0.1, 0.2, 0.3]),
    )
    out = group_metrics(pred, label, base)
    paired = paired_auc(pred, base, label)
    assert out["auc_minus_baseline"] == pytest.approx(out["auc"] - out["baseline_auc"])
    assert out["auc_minus_baseline_se"] == paired["standard_error"] and out["auc_minus_baseline_se"] > 0


def test_quality_of_predictions_refuses_predictions_of_other_texts():
    ds = Dataset.from_dict({"text": ["a", "b", "c"], "labels": [[1.0], [0.0], [1.0]]})
    with pytest.raises(ValueError, match="3 texts"):
        quality_of_predictions([0.1, 0.2], ds)
    assert quality_of_predictions([0.9, 0.1, 0.8], ds)["all"]["auc"] == 1.0
