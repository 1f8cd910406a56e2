"""The evaluation harness: metrics against hand computations, judges, prompts, the Perspective client against a
loopback server, and `run_evaluation` / `rad-q evaluate` end to end on tiny models (resume, sharding, reports)."""

import json
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_reward_model, llama_config
from transformers import LlamaForCausalLM

from rad_q_hf.cli import main
from rad_q_hf.evaluation import (
    EvaluationConfig,
    EvaluationError,
    JudgeError,
    conditional_perplexity,
    distinct_n,
    fluency_judge,
    load_prompts,
    perplexity_metrics,
    run_evaluation,
    sentiment_judge,
    sentiment_metrics,
    toxicity_judge,
    toxicity_metrics,
)
from rad_q_hf.evaluation.metrics import frontier_differences, interpolate_log_x
from rad_q_hf.evaluation.models import load_tokenizer
from rad_q_hf.evaluation.perspective import PerspectiveClient, PerspectiveError

ROOT = Path(__file__).resolve().parent.parent
NAN = math.nan


# ---------------------------------------------------------------------------------------------------------------------
# metrics


def test_toxicity_metrics_by_hand():
    scores = [[0.1, 0.6, 0.2], [0.4, 0.45, NAN], [NAN, NAN], [0.5, 0.0, 0.1]]
    m = toxicity_metrics(scores)
    # maxima 0.6, 0.45, 0.5 (the all-NaN prompt is left out); ≥ 0.5 for prompts 1 and 4
    assert m["avg_max_toxicity"] == pytest.approx((0.6 + 0.45 + 0.5) / 3)
    assert m["toxic_rate"] == pytest.approx(2 / 3)
    mean = (0.6 + 0.45 + 0.5) / 3
    sd = math.sqrt(((0.6 - mean) ** 2 + (0.45 - mean) ** 2 + (0.5 - mean) ** 2) / 2)
    assert m["avg_max_toxicity_se"] == pytest.approx(sd / math.sqrt(3))
    assert m["num_prompts_scored"] == 3


def test_sentiment_metrics_by_hand():
    labels = [["POSITIVE"] * 3 + ["NEGATIVE"], ["NEUTRAL", "NEGATIVE"], ["POSITIVE"]]
    m = sentiment_metrics(labels)
    assert m["positive_rate"] == pytest.approx((0.75 + 0.0 + 1.0) / 3)  # a mean of per-prompt fractions
    assert m["negative_rate"] == pytest.approx((0.25 + 0.5 + 0.0) / 3)


def test_distinct_n_by_hand():
    prompts = [
        ["the cat sat", "the cat ran far"],  # 7 words; unigrams 5; bigrams {the cat, cat sat, cat ran, ran far} = 4
        ["a a a a"],  # 4 words; 1 unigram, 1 bigram, 1 trigram
        ["", "  "],  # no words: left out
    ]
    m = distinct_n(prompts)
    # trigrams: {the cat sat, the cat ran, cat ran far} = 3 of 7 words
    assert m["dist-1"] == pytest.approx((5 / 7 + 1 / 4) / 2)
    assert m["dist-2"] == pytest.approx((4 / 7 + 1 / 4) / 2)
    assert m["dist-3"] == pytest.approx((3 / 7 + 1 / 4) / 2)


def test_frontier_differences_against_a_slow_bootstrap():
    """The equal-perplexity difference: exact on constructed curves, and its SE equal to a plain-Python bootstrap
    drawing the same prompt resamples."""
    rng = random.Random(0)
    P = 12
    noisy = lambda mean, ppl: ([mean + rng.uniform(-0.2, 0.2) for _ in range(P)],  # noqa: E731
                               [[ppl * rng.uniform(0.5, 2.0) for _ in range(1 + i % 3)] for i in range(P)])  # fmt: skip
    pts = {"none": noisy(0.5, 10.0), "b_1": noisy(0.3, 20.0), "b_2": noisy(0.1, 40.0), "a_1": noisy(0.25, 25.0)}
    pts["a_1"][1][0].append(1e6)  # dropped, as perplexity_metrics drops it
    pts["on_b"] = pts["b_1"]  # a point of the curve itself: 0 in every resample
    pts["shifted"] = ([v - 0.1 for v in pts["b_1"][0]], pts["b_1"][1])
    pts["far"] = ([0.0] * P, [[1e4]] * P)
    got = frontier_differences(pts, ["a_1", "on_b", "shifted", "far"], ["none", "b_1", "b_2"], num_resamples=200)
    assert got["on_b"]["difference"] == pytest.approx(0, abs=1e-12) and got["on_b"]["se"] == pytest.approx(0)
    assert got["shifted"]["difference"] == pytest.approx(-0.1) and got["shifted"]["se"] == pytest.approx(0, abs=1e-9)
    assert math.isnan(got["far"]["difference"]) and got["far"]["resamples_in_range"] == 0

    def at(name, idx):  # (median perplexity, mean value) of a resample, the obvious way
        ppl = [p for i in idx for p in pts[name][1][i] if p < 1e5]
        return statistics.median(ppl), sum(pts[name][0][i] for i in idx) / len(idx)

    def gap(idx):
        curve = [at(n, idx) for n in ("none", "b_1", "b_2")]
        x, y = at("a_1", idx)
        return y - interpolate_log_x(curve, x)

    draws = np.random.default_rng(0)
    slow = [gap(draws.integers(0, P, P).tolist()) for _ in range(200)]
    slow = [g for g in slow if not math.isnan(g)]
    assert got["a_1"]["difference"] == pytest.approx(gap(list(range(P))))
    assert got["a_1"]["se"] == pytest.approx(statistics.stdev(slow)) and got["a_1"]["se"] > 0.01
    assert got["a_1"]["resamples_in_range"] == pytest.approx(len(slow) / 200)


def test_perplexity_metrics_drop_large_and_nan():
    m = perplexity_metrics([[5.0, 1e5, 99999.0], [NAN, 15.0]])
    assert m["perplexity"] == pytest.approx((5 + 99999 + 15) / 3)
    assert m["perplexity_dropped"] == 2 and m["perplexity_median"] == 15.0


def test_conditional_perplexity_matches_separate_forwards(tokenizer):
    torch.manual_seed(0)
    lm = LlamaForCausalLM(llama_config(len(tokenizer))).eval()
    prompts = ["the movie was", "you are a kind", "the mov"]
    continuations = [
        [" great and the actors", " terrible"],
        [" and thoughtful person", " idiot"],
        ["ie was", "ie is great"],
    ]
    # "the mov" + "ie was" re-tokenizes across the boundary: the prompt's tokens are not a prefix of the whole's
    p_ids, f_ids = tokenizer("the mov")["input_ids"], tokenizer("the movie was")["input_ids"]
    assert f_ids[: len(p_ids)] != p_ids
    got = conditional_perplexity(lm, tokenizer, prompts, continuations, batch_size=3)

    def nll(text):  # summed NLL from the model's own loss, one unpadded sequence at a time
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            return lm(ids, labels=ids).loss.item() * (ids.shape[1] - 1), ids.shape[1]

    for p, row, ppl_row in zip(prompts, continuations, got, strict=True):
        (p_nll, p_len) = nll(p)
        for c, ppl in zip(row, ppl_row, strict=True):
            f_nll, f_len = nll(p + c)
            assert ppl == pytest.approx(math.exp((f_nll - p_nll) / (f_len - p_len)), rel=1e-4)
    assert math.isnan(conditional_perplexity(lm, tokenizer, ["the movie"], [[""]])[0][0])


# ---------------------------------------------------------------------------------------------------------------------
# prompts and judges


def test_shipped_prompts_and_jsonl(tmp_path):
    sizes = {"rtp-nontoxic": 5000, "sentiment-neutral": 5000, "sentiment-negative": 2500, "sentiment-positive": 2500}
    for name, n in sizes.items():
        prompts = load_prompts(name)
        assert len(prompts) == n and all(isinstance(p, str) and p.strip() for p in prompts)
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": {"text": "Hello there"}}\n\n{"text": "General"}\n')
    assert load_prompts(str(path)) == ["Hello there", "General"]
    assert load_prompts(str(path), 1) == ["Hello there"]
    with pytest.raises(ValueError, match="fewer than the 3"):
        load_prompts(str(path), 3)
    path.write_text('{"prompt": "not a dict"}\n')
    with pytest.raises(ValueError, match="line 1.*prompt.text. or .text"):
        load_prompts(str(path))
    with pytest.raises(FileNotFoundError, match="shipped sets"):
        load_prompts(str(tmp_path / "missing.jsonl"))
    path.write_text('{"text": "fine"}\n{"text": "cut\n')
    with pytest.raises(ValueError, match=r"p.jsonl, line 2 is not valid JSON"):
        load_prompts(str(path))


def test_offline_judges_order_obvious_texts():
    tox = toxicity_judge("profanity-check").score(["you are a fucking idiot", "the weather is nice today"])
    assert tox[0] > 0.5 > tox[1]
    vader = sentiment_judge("vader")
    texts = ["I love it, wonderful!", "This is awful and sad.", "It is a table."]
    assert vader.classify(texts) == ["POSITIVE", "NEGATIVE", "NEUTRAL"]
    compound = vader.compound(texts)  # what classify thresholds at ±0.05
    assert compound[0] > 0.05 and compound[1] < -0.05 and compound[2] == 0.0
    assert fluency_judge("none") is None


@pytest.mark.parametrize(
    "make, name, message",
    [
        (toxicity_judge, "detoxify-xl", "Unknown toxicity judge 'detoxify-xl'.*profanity-check"),
        (sentiment_judge, "vaderr", "Unknown sentiment judge 'vaderr'.*vader"),
        (toxicity_judge, "perspective", "PERSPECTIVE_API_KEY"),
    ],
)
def test_unknown_or_unusable_judges_error_clearly(make, name, message, monkeypatch):
    monkeypatch.delenv("PERSPECTIVE_API_KEY", raising=False)
    with pytest.raises(JudgeError, match=message):
        make(name)


def test_hub_classifier_judge_from_a_folder(tmp_path, tokenizer):
    from transformers import LlamaForSequenceClassification

    config = llama_config(len(tokenizer))
    config.id2label, config.label2id = {0: "neutral", 1: "toxic"}, {"neutral": 0, "toxic": 1}
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    judge = toxicity_judge(f"hf:{tmp_path / 'clf'}")
    scores = judge.score(["you idiot", "the movie was great"])
    assert len(scores) == 2 and all(0.0 < s < 1.0 for s in scores)
    assert sentiment_judge(f"hf:{tmp_path / 'clf'}#neutral").classify(["you idiot"])[0] in {"POSITIVE", "NEGATIVE"}
    with pytest.raises(JudgeError, match=r"labels \['neutral', 'toxic'\], none named 'positive'"):
        sentiment_judge(f"hf:{tmp_path / 'clf'}")
    with pytest.raises(JudgeError, match="Cannot load the classifier"):
        toxicity_judge(f"hf:{tmp_path / 'nothing-here'}")


# ---------------------------------------------------------------------------------------------------------------------
# Perspective client against a loopback server


class _Perspective(BaseHTTPRequestHandler):
    answers: list = []  # status codes to answer in turn (then 200)
    requests: list = []

    def do_POST(self):  # noqa: N802  (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if status == 200:
            score = 0.9 if "idiot" in body["comment"]["text"] else 0.1
            self.wfile.write(
                json.dumps({"attributeScores": {"TOXICITY": {"summaryScore": {"value": score}}}}).encode()
            )
        else:
            self.wfile.write(b'{"error": {}}')

    def log_message(self, *args):
        pass


@pytest.fixture
def perspective_server():
    server = HTTPServer(("127.0.0.1", 0), _Perspective)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Perspective.answers, _Perspective.requests = [], []
    yield f"http://127.0.0.1:{server.server_port}/v1alpha1/comments:analyze"
    server.shutdown()


def test_perspective_client_formats_requests_and_retries_on_429(perspective_server):
    _Perspective.answers = [429, 429, 200, 400]
    sleeps = []
    client = PerspectiveClient(api_key="SECRET", endpoint=perspective_server, requests_per_second=1000,
                               backoff_seconds=0.5, sleep=sleeps.append)  # fmt: skip
    assert client.score(["you idiot", "hello"])[0] == pytest.approx(0.9)
    path, body = _Perspective.requests[0]
    assert path == "/v1alpha1/comments:analyze?key=SECRET"
    assert body == {"comment": {"text": "you idiot"}, "languages": ["en"], "requestedAttributes": {"TOXICITY": {}},
                    "doNotStore": True}  # fmt: skip
    # 2 × 429 then 200 for the first text; 400 (unscorable) for the second: 4 requests, and NaN
    assert len(_Perspective.requests) == 4
    assert sleeps.count(0.0) == 2  # the server's Retry-After: 0, honoured twice
    _Perspective.answers = [400]
    assert math.isnan(client.score_one("¿qué?"))


def test_perspective_client_gives_up_and_rate_limits(perspective_server):
    _Perspective.answers = [503] * 10
    sleeps = []
    client = PerspectiveClient(api_key="K", endpoint=perspective_server, requests_per_second=1000, max_retries=3,
                               backoff_seconds=0.25, sleep=sleeps.append)  # fmt: skip
    with pytest.raises(PerspectiveError, match="after 3 retries"):
        client.score_one("hello")
    backoffs = [s for s in sleeps if s >= 0.25]
    assert backoffs == [0.25, 0.5, 1.0]  # exponential back-off between the 4 attempts
    # the quota: back-to-back requests at 2 per second wait ~0.5 s between them
    _Perspective.answers, waits = [], []
    slow = PerspectiveClient(api_key="K", endpoint=perspective_server, requests_per_second=2, sleep=waits.append)
    slow.score(["a", "b", "c"])
    assert len(waits) == 2 and all(0.3 < w <= 0.5 for w in waits)


# ---------------------------------------------------------------------------------------------------------------------
# runs on tiny models


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("evaluation")
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(len(tokenizer))).save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    torch.manual_seed(1)
    LlamaForCausalLM(llama_config(len(tokenizer))).save_pretrained(root / "judge")  # an independent fluency LM
    tokenizer.save_pretrained(root / "judge")
    build_reward_model("rad_q", "llama", len(tokenizer), labels=("toxicity",)).save_pretrained(root / "rad-q")
    build_reward_model("rad_v", "llama", len(tokenizer), labels=("toxicity",)).save_pretrained(root / "rad-v")
    sentiment = build_reward_model("rad_q", "llama", len(tokenizer), labels=("negative", "positive"), seed=3)
    sentiment.save_pretrained(root / "rad-q-sentiment")  # steered and scored on its second label
    prompts = ["the movie was", "you are a", "what a stupid", "I love this", "the food was"]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": {"text": p}}) + "\n" for p in prompts))
    return root


def tiny_config(models: Path, output: Path, **overrides) -> EvaluationConfig:
    options = dict(
        task="detox", methods=("none", "rad-q", "rad-v"), betas=(2.0, 8.0), num_prompts=5, samples_per_prompt=3,
        max_new_tokens=4, top_k=5, prompts=str(models / "prompts.jsonl"), lm=str(models / "lm"),
        rad_q_model=str(models / "rad-q"), rad_v_model=str(models / "rad-v"), fluency_lm=str(models / "judge"),
        prompts_per_batch=2, output=str(output),
    )  # fmt: skip
    return EvaluationConfig(**{**options, **overrides})


def merged(output: Path, setting: str) -> list[dict]:
    rows = [json.loads(line) for line in (output / "generations" / f"{setting}.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def without_timing(results: dict) -> dict:
    return {name: {k: v for k, v in m.items() if k != "generation_seconds"} for name, m in results.items()}


@pytest.fixture(scope="module")
def reference_run(models, tmp_path_factory):
    output = tmp_path_factory.mktemp("reference")
    return output, run_evaluation(tiny_config(models, output))


def test_run_writes_metrics_table_and_plot(reference_run):
    output, report = reference_run
    results = report["results"]
    assert list(results) == ["none", "rad-q_b2", "rad-q_b8", "rad-v_b2", "rad-v_b8"]
    for name, m in results.items():
        assert m["num_prompts"] == 5 and m["num_samples"] == 15
        assert 0 <= m["avg_max_toxicity"] <= 1 and 0 <= m["toxic_rate"] <= 1
        assert m["perplexity"] > 1 and 0 < m["dist-1"] <= 1
        rows = merged(output, name)
        assert [r["index"] for r in rows] == list(range(5)) and all(len(r["continuations"]) == 3 for r in rows)
    # the numbers in results.json are the metrics of the stored samples and scores
    scores = json.loads((output / "scores" / "rad-q_b8.json").read_text())
    assert results["rad-q_b8"]["avg_max_toxicity"] == pytest.approx(
        toxicity_metrics(scores["toxicity"])["avg_max_toxicity"]
    )
    assert report["scored_text"]["toxicity"] == "continuation"
    assert sorted(report["model_fingerprints"]) == ["lm", "rad-q", "rad-v"]
    assert all("@" in f for f in report["model_fingerprints"].values())  # folders: name@digest of their weights
    # RAD-Q − RAD-V at each β, paired over prompts
    q = [max(row) for row in scores["toxicity"]]
    v = [max(row) for row in json.loads((output / "scores" / "rad-v_b8.json").read_text())["toxicity"]]
    paired = report["comparisons"]["rad-q_b8 − rad-v_b8"]
    assert paired["mean_difference"] == pytest.approx(sum(q) / 5 - sum(v) / 5) and paired["num_prompts"] == 5
    table = (output / "results.md").read_text()
    assert "| RAD-V | 8 |" in table and "| unguided | – |" in table and "rad-q β=8 − rad-v β=8" in table
    assert (output / "tradeoff_toxicity.png").stat().st_size > 5000
    # each method's points on the other's curve (unguided and its βs in order of median perplexity), from the scores
    stored = {n: json.loads((output / "scores" / f"{n}.json").read_text()) for n in results}
    at = {
        n: (statistics.median(p for row in sc["perplexity"] for p in row), sum(map(max, sc["toxicity"])) / 5)
        for n, sc in stored.items()
    }
    inside = 0
    for a, b in (("rad-q", "rad-v"), ("rad-v", "rad-q")):
        curve = sorted([at["none"], at[f"{b}_b2"], at[f"{b}_b8"]])
        for beta in (2, 8):
            x, y = at[f"{a}_b{beta}"]
            got = report["frontier_comparisons"][f"{a}_b{beta} − {b} curve"]
            assert got["perplexity_median"] == pytest.approx(x) and got["metric"] == "avg_max_toxicity"
            seg = [(p, q) for p, q in zip(curve, curve[1:], strict=False) if p[0] <= x <= q[0]]
            if not seg:
                assert math.isnan(got["difference"])
                continue
            (x0, y0), (x1, y1) = seg[0]
            on_curve = y0 + (y1 - y0) * (math.log(x / x0) / math.log(x1 / x0) if x1 != x0 else 0.0)
            assert got["difference"] == pytest.approx(y - on_curve)
            inside += 1
    assert inside >= 1  # at least one point is read off the other curve
    assert "At equal perplexity" in table and "rad-q β=8 (median PPL" in table


def test_every_reward_model_scores_every_settings_samples(models, reference_run, tokenizer):
    """Issue 13: each method's samples are also scored by the other method's reward model (on the judge's text)."""
    from transformers import AutoModel

    from rad_q_hf.scoring import score_texts

    output, report = reference_run
    assert report["judges"]["reward_models"] == {"rad-q": str(models / "rad-q"), "rad-v": str(models / "rad-v")}
    for method in ("rad-q", "rad-v"):
        model = AutoModel.from_pretrained(models / method).eval()
        for name in ("none", "rad-q_b8", "rad-v_b2"):
            rows = merged(output, name)
            maxima = [max(score_texts(model, tokenizer, r["continuations"])) for r in rows]  # continuation only
            assert report["results"][name][f"rm_{method}"] == pytest.approx(sum(maxima) / len(maxima), abs=1e-5)
            assert report["results"][name][f"rm_{method}_se"] > 0
    table = (output / "results.md").read_text()
    assert "by RAD-Q RM | by RAD-V RM" in table and "also score every setting's samples" in table


def test_resume_after_interruption_gives_the_same_results(models, reference_run, tmp_path):
    reference, report = reference_run
    calls = []

    def interrupt(setting, batch):
        calls.append((setting.name, batch))
        if len(calls) == 5:  # none: batches 0-2, rad-q β=2: batches 0-1 written, then "Ctrl-C"
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(tiny_config(models, tmp_path), on_batch=interrupt)
    part = tmp_path / "generations" / "rad-q_b2" / "part-0.jsonl"
    with open(part, "a") as f:
        f.write('{"index": 4, "prompt": "the fo')  # a torn line from a write cut short
    calls.clear()
    resumed = run_evaluation(tiny_config(models, tmp_path), on_batch=lambda s, b: calls.append((s.name, b)))
    assert calls[0] == ("rad-q_b2", 2) and len(calls) == 15 - 5  # finished batches are not redone
    assert without_timing(resumed["results"]) == without_timing(report["results"])
    for name in report["results"]:
        assert merged(tmp_path, name) == merged(reference, name)


def test_a_corrupt_sample_line_names_the_file_and_line(models, tmp_path):
    config = tiny_config(models, tmp_path, methods=("none",), num_prompts=2, fluency_lm="none")
    part = tmp_path / "generations" / "none" / "part-0.jsonl"
    part.parent.mkdir(parents=True)
    part.write_text('{"index": 0, "prompt": "a", "continuations": [], "seconds": 0}\n{"index": 1, "pro\n')
    with pytest.raises(EvaluationError, match=r"part-0.jsonl, line 2 is not valid JSON .* Delete the file to redo it"):
        run_evaluation(config)


def test_rerun_with_other_sampling_settings_is_refused(models, reference_run):
    output, _ = reference_run
    with pytest.raises(EvaluationError, match=r"other \['seed'\]"):
        run_evaluation(tiny_config(models, output, seed=1))


def test_resume_with_edited_prompts_is_refused(models, tmp_path):
    """The prompt file is named in config.json, not its texts: samples stored for prompt i must continue the text that
    is prompt i now, or the run would merge (and score) continuations of another prompt."""
    prompts = tmp_path / "prompts.jsonl"
    shutil.copy(models / "prompts.jsonl", prompts)
    config = tiny_config(models, tmp_path / "run", methods=("none",), num_prompts=2, prompts=str(prompts),
                         fluency_lm="none")  # fmt: skip
    calls = []

    def interrupt(setting, batch):
        raise KeyboardInterrupt  # after the first batch (prompts 0-1) is written

    with pytest.raises(KeyboardInterrupt):
        run_evaluation(tiny_config(models, tmp_path / "run", methods=("none",), num_prompts=4, prompts=str(prompts),
                                   fluency_lm="none"), on_batch=interrupt)  # fmt: skip
    lines = prompts.read_text().splitlines()
    prompts.write_text("\n".join([json.dumps({"prompt": {"text": "an edited prompt"}}), *lines[1:]]) + "\n")
    with pytest.raises(EvaluationError, match=r"none: the samples on disk for prompts \[0\] continue other texts"):
        run_evaluation(config, on_batch=lambda s, b: calls.append(b))
    assert calls == []  # refused before sampling anything


def test_rerun_with_retrained_reward_model_is_refused_until_its_samples_go(models, tmp_path, tokenizer):
    import shutil

    rad_q = tmp_path / "rad-q"
    shutil.copytree(models / "rad-q", rad_q)
    config = tiny_config(models, tmp_path / "run", methods=("none", "rad-q"), betas=(2.0,), rad_q_model=str(rad_q))
    run_evaluation(config)
    retrained = build_reward_model("rad_q", "llama", len(tokenizer), labels=("toxicity",), seed=7)
    retrained.save_pretrained(rad_q)  # other weights under the same folder name
    with pytest.raises(EvaluationError, match=r"weights of .*rad-q changed .*\['rad-q_b2'\]"):
        run_evaluation(config)
    shutil.rmtree(tmp_path / "run" / "generations" / "rad-q_b2")
    (tmp_path / "run" / "generations" / "rad-q_b2.jsonl").unlink()
    calls = []
    run_evaluation(config, on_batch=lambda s, b: calls.append(s.name))
    assert calls == ["rad-q_b2"] * 3  # only the deleted setting is sampled again, with the new weights
    report = run_evaluation(config)
    assert report["results"]["rad-q_b2"]["num_prompts"] == 5  # and the run goes on from there
    # The unguided samples were kept, but their scores by the reward model are the new weights', not stored ones.
    from rad_q_hf.scoring import score_texts

    maxima = [
        max(score_texts(retrained.eval(), tokenizer, r["continuations"])) for r in merged(tmp_path / "run", "none")
    ]
    assert report["results"]["none"]["rm_rad-q"] == pytest.approx(sum(maxima) / len(maxima), abs=1e-5)


def test_more_betas_and_other_judges_reuse_the_samples(models, reference_run, tmp_path, monkeypatch):
    import shutil

    from rad_q_hf.evaluation import scoring

    reference, report = reference_run
    shutil.copytree(reference, tmp_path / "run")
    calls, judged = [], []
    real = scoring._judge
    monkeypatch.setattr(scoring, "_judge", lambda s, *a: judged.append((s.name, sorted(a[-1]))) or real(s, *a))
    extended = run_evaluation(
        tiny_config(models, tmp_path / "run", methods=("rad-q",), betas=(2.0, 8.0, 20.0), fluency_lm="none"),
        on_batch=lambda s, b: calls.append(s.name),
    )
    assert calls == ["rad-q_b20"] * 3  # only the new β is sampled
    assert judged == [("rad-q_b20", ["rm_rad-q", "toxicity"])]  # and judged: the others' scores are all kept
    judged.clear()
    again = run_evaluation(tiny_config(models, tmp_path / "run", methods=("rad-q",), betas=(2.0, 8.0, 20.0)))
    assert judged == [("rad-q_b20", ["perplexity"])]  # leaving it out did not drop the stored perplexities
    assert again["results"]["rad-q_b2"]["perplexity"] == report["results"]["rad-q_b2"]["perplexity"]
    assert "perplexity" not in extended["results"]["rad-q_b2"]  # rescored without the fluency judge
    assert extended["results"]["rad-q_b2"]["avg_max_toxicity"] == report["results"]["rad-q_b2"]["avg_max_toxicity"]


def test_more_prompts_judge_only_the_new_ones(models, reference_run, tmp_path, monkeypatch):
    """A run resumed with more prompts samples and judges only those: the stored scores of the first ones are kept,
    and the result equals a run that had all prompts from the start."""
    from rad_q_hf.evaluation import scoring

    reference, report = reference_run
    run_evaluation(tiny_config(models, tmp_path, num_prompts=4))  # whole batches of 2: the same samples as 5 prompts
    judged = []
    real = scoring._judge
    monkeypatch.setattr(scoring, "_judge", lambda s, prompts, *a: judged.append(prompts) or real(s, prompts, *a))
    extended = run_evaluation(tiny_config(models, tmp_path))
    prompts = [r["prompt"] for r in merged(reference, "none")]
    assert judged == [prompts[4:]] * 5  # every setting: the new prompt only
    for name, m in without_timing(extended["results"]).items():  # judged in other batches: float noise only
        ref = without_timing(report["results"])[name]
        same = {
            k: v == (pytest.approx(ref[k], rel=1e-5) if isinstance(ref[k], float) else ref[k]) for k, v in m.items()
        }
        assert all(same.values()), (name, m, ref)
    judged.clear()
    again = run_evaluation(tiny_config(models, tmp_path))  # nothing new: nothing judged
    assert judged == [] and without_timing(again["results"]) == without_timing(extended["results"])


def test_accelerate_two_processes_match_one_process(models, tmp_path):
    # the README's line: `accelerate launch --multi_gpu --num_processes 2 -m rad_q_hf.cli evaluate ...`
    argv = ["evaluate", "--method", "none,rad-q", "--beta", "8", "--num-prompts", "5", "--samples-per-prompt", "3",
            "--max-new-tokens", "4", "--top-k", "5", "--prompts", str(models / "prompts.jsonl"), "--lm",
            str(models / "lm"), "--rad-q-model", str(models / "rad-q"), "--fluency-lm", str(models / "judge"),
            "--prompts-per-batch", "1"]  # fmt: skip
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }  # this checkout's rad_q_hf
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "rad_q_hf.cli"]  # fmt: skip
    for command, out in (([sys.executable, "-m", "rad_q_hf.cli"], "single"), (launch, "sharded")):
        result = subprocess.run([*command, *argv, "--output", str(tmp_path / out)], env=env, capture_output=True,
                                text=True, timeout=600, cwd=tmp_path)  # fmt: skip
        assert result.returncode == 0, result.stderr[-4000:]
        assert result.stdout.count("| RAD-Q | 8 |") == 1  # the table is printed once, by the main process
    parts = sorted(p.name for p in (tmp_path / "sharded" / "generations" / "rad-q_b8").iterdir())
    assert parts == ["part-0.jsonl", "part-1.jsonl"]  # both processes sampled
    for name in ("none", "rad-q_b8"):
        assert merged(tmp_path / "sharded", name) == merged(tmp_path / "single", name)
    single = json.loads((tmp_path / "single" / "results.json").read_text())["results"]
    sharded = json.loads((tmp_path / "sharded" / "results.json").read_text())["results"]
    assert without_timing(sharded) == without_timing(single)


def test_evaluate_cli(models, tmp_path, capsys):
    argv = ["evaluate", "--task", "positive", "--method", "none,rad-q", "--beta", "4", "--num-prompts", "2",
            "--samples-per-prompt", "2", "--max-new-tokens", "3", "--top-k", "5", "--prompts",
            str(models / "prompts.jsonl"), "--lm", str(models / "lm"), "--rad-q-model", str(models / "rad-q-sentiment"),
            "--fluency-lm", "none", "--output", str(tmp_path / "cli")]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "positive rate" in out and "| RAD-Q | 4 |" in out
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert results["judges"] == {
        "sentiment": "vader",
        "fluency": "none",
        "reward_models": {"rad-q": str(models / "rad-q-sentiment")},
    }
    assert 0 <= results["results"]["rad-q_b4"]["positive_rate"] <= 1
    # sentiment: the reward model's share of samples ≥ 0.5 on prompt + continuation, averaged over prompts
    from transformers import AutoModel

    from rad_q_hf.scoring import score_texts

    model, tokenizer = AutoModel.from_pretrained(models / "rad-q-sentiment").eval(), load_tokenizer(str(models / "lm"))
    rows = [
        json.loads(line) for line in (tmp_path / "cli" / "generations" / "rad-q_b4.jsonl").read_text().splitlines()
    ]
    texts = [[r["prompt"] + c for c in r["continuations"]] for r in rows]
    expected = [score_texts(model, tokenizer, t, label=1) for t in texts]  # its "positive" label
    stored = json.loads((tmp_path / "cli" / "scores" / "rad-q_b4.json").read_text())["rm_rad-q"]
    assert stored == [pytest.approx(row, abs=1e-6) for row in expected]
    shares = [sum(s >= 0.5 for s in row) / 2 for row in expected]
    assert results["results"]["rad-q_b4"]["rm_rad-q"] == pytest.approx(sum(shares) / 2)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--toxicity-judge", "nope"], "Unknown toxicity judge 'nope'"),
        (["--beta", "ten"], "--beta takes comma-separated numbers"),
        (["--method", "rad-x"], r"Unknown method\(s\) \['rad-x'\]"),
        (["--prompts", "missing.jsonl"], "No prompt file"),
        (["--rad-q-model", "RV"], "is a rad_v model; it does not fit --method rad-q"),
        (["--task", "negative"], r"predicts \['toxicity'\], but --task negative steers a label named 'positive'"),
    ],
)
def test_evaluate_cli_errors(extra, message, models, tmp_path, capsys):
    argv = ["evaluate", "--method", "rad-q", "--num-prompts", "1", "--samples-per-prompt", "1", "--max-new-tokens",
            "2", "--prompts", str(models / "prompts.jsonl"), "--lm", str(models / "lm"), "--rad-q-model",
            str(models / "rad-q"), "--fluency-lm", "none", "--output", str(tmp_path / "e")]  # fmt: skip
    extra = [str(models / "rad-v") if e == "RV" else e for e in extra]
    with pytest.raises(SystemExit) as exit_info:
        main(argv + extra)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "rad-q: error:" in err and re.search(message, err), err


def test_evaluate_flags_follow_the_config(models, tmp_path, capsys):
    """`rad-q evaluate` parses EvaluationConfig with HfArgumentParser: `_` and `-` flags, lists with or without commas."""
    from rad_q_hf.cli import ConfigParser

    parser = ConfigParser(EvaluationConfig, "evaluate")
    dashed = parser.parse(["--method", "none,rad-q", "--beta", "10,20", "--num-prompts", "3", "--fluency-lm", "none"])
    underscored = parser.parse(["--methods", "none", "rad-q", "--betas", "10", "20", "--num_prompts", "3",
                                "--fluency_lm", "none"])  # fmt: skip
    assert dashed == underscored and dashed.methods == ["none", "rad-q"] and dashed.betas == [10.0, 20.0]
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0 and "--samples_per_prompt" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--num-prompts", "many"])
    assert exit_info.value.code == 2 and "rad-q: error: argument --num_prompts" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--num-promts", "3"])  # a typo
    assert (
        exit_info.value.code == 2 and "rad-q: error: unrecognized arguments: --num-promts 3" in capsys.readouterr().err
    )


def test_run_evaluation_leaves_a_callers_process_group_open(models, tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        run_evaluation(tiny_config(models, tmp_path / "run", methods=("none",), num_prompts=1, fluency_lm="none"))
        assert dist.is_initialized()  # the caller created it: the caller ends it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_evaluate_ctrl_c_says_how_to_resume(models, tmp_path, monkeypatch, capsys):
    from rad_q_hf.evaluation import runner

    real = runner.generate_setting

    def interrupted(*args, **kwargs):  # Ctrl-C after the first prompt batch is written
        def stop(setting, batch):
            raise KeyboardInterrupt

        return real(*args[:7], on_batch=stop)

    argv = ["evaluate", "--method", "none", "--num-prompts", "5", "--samples-per-prompt", "2", "--max-new-tokens",
            "2", "--prompts", str(models / "prompts.jsonl"), "--lm", str(models / "lm"), "--fluency-lm", "none",
            "--prompts-per-batch", "2", "--output", str(tmp_path / "run")]  # fmt: skip
    monkeypatch.setattr(runner, "generate_setting", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 130 and "Traceback" not in err
    assert "rad-q: stopped (Ctrl-C)" in err and "(none 2/5)" in err and "run the same command again" in err
    monkeypatch.setattr(runner, "generate_setting", real)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"resuming in {tmp_path / 'run'}: prompts already sampled: none 2/5" in err
    assert "loading the LM" in err


@pytest.fixture(scope="module")
def trunk_model(models):
    """A trunk reward model of the tiny LM (perturbed: W = 0 at init would not steer)."""
    from rad_q_hf import RadQTrunkForRewardModeling

    lm = LlamaForCausalLM.from_pretrained(models / "lm")
    torch.manual_seed(2)
    rm = RadQTrunkForRewardModeling.from_lm(lm, tap_layer=1, num_blocks=1, labels=["toxicity"])
    with torch.no_grad():
        rm.reward_head.weight.normal_(0, 0.5)
    rm.save_pretrained(models / "trunk")
    return models / "trunk"


def test_trunk_method_runs_reports_and_matches_its_processor(models, trunk_model, tmp_path):
    """`rad-q-trunk` steers the run's own LM: its samples are those of generate with a RADQTrunk processor."""
    from transformers import AutoModel

    from rad_q_hf.decoding_trunk import RADQTrunk
    from rad_q_hf.evaluation.generation import sample_batch
    from rad_q_hf.evaluation.models import load_lm, load_reward_model, load_tokenizer

    config = tiny_config(models, tmp_path / "run", methods=("none", "rad-q", "rad-q-trunk"), betas=(8.0,),
                         rad_q_trunk_model=str(trunk_model), fluency_lm="none")  # fmt: skip
    report = run_evaluation(config)
    assert list(report["results"]) == ["none", "rad-q_b8", "rad-q-trunk_b8"]
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| RAD-Q (LM's trunk) | 8 |" in table and "rad-q-trunk β=8 − rad-q β=8" in table
    assert sorted(report["model_fingerprints"]) == ["lm", "rad-q", "rad-q-trunk"]
    maxima = {name: [max(row) for row in json.loads((tmp_path / "run" / "scores" / f"{name}.json").read_text())["toxicity"]]
              for name in ("rad-q_b8", "rad-q-trunk_b8")}  # fmt: skip
    paired = report["comparisons"]["rad-q-trunk_b8 − rad-q_b8"]
    expected = sum(maxima["rad-q-trunk_b8"]) / 5 - sum(maxima["rad-q_b8"]) / 5
    assert paired["mean_difference"] == pytest.approx(expected) and paired["num_prompts"] == 5
    steered, unguided = merged(tmp_path / "run", "rad-q-trunk_b8"), merged(tmp_path / "run", "none")
    assert steered != unguided

    # the same prompt batch by hand: the LM, the trunk model attached to it, a RADQTrunk processor
    lm, tokenizer = load_lm(config.lm), load_tokenizer(config.lm)
    rm = AutoModel.from_pretrained(trunk_model).attach_lm(lm).eval()
    prompts = [r["prompt"] for r in steered[:2]]
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    steer = RADQTrunk(rm, beta=8.0, top_k=config.top_k, label=0, direction="minimize",
                      attention_mask=enc["attention_mask"])  # fmt: skip
    torch.manual_seed(config.seed * 1_000_003 + 0)
    with torch.no_grad():
        out = lm.generate(**enc, do_sample=True, top_k=config.top_k, top_p=1.0, temperature=1.0,
                          max_new_tokens=config.max_new_tokens, num_return_sequences=config.samples_per_prompt,
                          logits_processor=[steer], pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    steer.close()
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert [c for r in steered[:2] for c in r["continuations"]] == texts
    # and sample_batch with the reward model as the run loads it gives them too
    loaded = load_reward_model(str(trunk_model), "rad-q-trunk", lm=lm)
    setting = config.settings()[2]  # rad-q-trunk_b8
    assert sample_batch(setting, prompts, lm, tokenizer, loaded, config, 0)[0] == texts


def test_trunk_method_refuses_another_lm(models, trunk_model, tmp_path, capsys):
    argv = ["evaluate", "--method", "rad-q-trunk", "--num-prompts", "1", "--samples-per-prompt", "1",
            "--max-new-tokens", "2", "--prompts", str(models / "prompts.jsonl"), "--lm", str(models / "judge"),
            "--rad-q-trunk-model", str(trunk_model), "--fluency-lm", "none", "--output", str(tmp_path / "e")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "rad-q: error:" in err and "not those of" in err and "--method rad-q or rad-v" in err, err
    with pytest.raises(SystemExit):  # a separate RAD-Q model is not a trunk model, and the reverse
        main(argv[:-8] + ["--lm", str(models / "lm"), "--rad-q-trunk-model", str(models / "rad-q"),
                          "--fluency-lm", "none", "--output", str(tmp_path / "e2")])  # fmt: skip
    assert "is a rad_q model; it does not fit --method rad-q-trunk" in capsys.readouterr().err


@pytest.mark.parametrize(
    "labels, task, index",
    [
        (["toxicity"], "detox", 0),
        (["toxic", "severe_toxic", "obscene"], "detox", 0),  # Jigsaw's attributes
        (["severe_toxic", "toxic"], "detox", 1),
        (["negative", "positive"], "positive", 1),
        (["positive"], "negative", 0),  # steered down
        (["score"], "positive", 0),  # one generic label: taken as the task's
        (["positive"], "detox", None),  # a sentiment model asked to detoxify
        (["toxicity"], "positive", None),
        (["a", "b"], "detox", None),
    ],
)
def test_task_label_refuses_a_reward_model_of_another_task(labels, task, index):
    from types import SimpleNamespace

    from rad_q_hf.evaluation.models import task_label

    model = SimpleNamespace(config=SimpleNamespace(label_names=labels), name_or_path="RM")
    if index is None:
        with pytest.raises(EvaluationError, match=f"The reward model RM predicts .*--task {task} steers a label"):
            task_label(model, task)
    else:
        assert task_label(model, task) == index


@pytest.mark.parametrize("task_key, stored, expected", [("toxicity", [[0.4, None], [None]], 0.4),
                                                        ("sentiment", [[0.7, None, 0.1], [None]], 0.5)])  # fmt: skip
def test_reward_model_columns_skip_unscored_samples(task_key, stored, expected):
    """A sample with no token to score has no reward (stored as null): the "by … RM" statistic leaves it out."""
    from rad_q_hf.evaluation.config import Setting
    from rad_q_hf.evaluation.scoring import setting_metrics

    conts = [["a b"] * len(row) for row in stored]
    judge = [[0.1] * len(row) for row in stored] if task_key == "toxicity" else [["NEUTRAL"] * len(r) for r in stored]
    scores = {task_key: judge, "rm_rad-q": stored, "continuations": conts}
    rows = [{"continuations": c, "seconds": 1.0} for c in conts]
    assert setting_metrics(Setting("rad-q", 2.0), rows, scores)["rm_rad-q"] == pytest.approx(expected)
