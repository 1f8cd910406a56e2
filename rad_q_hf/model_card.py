"""Model cards of reward models, rendered from the package's template with `huggingface_hub.ModelCard`."""

import json
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

TEMPLATE = Path(__file__).parent / "templates" / "model_card.md"
REPO_URL = "https://github.com/rad-q-hf/rad_q_hf"


def metrics_table(metrics: dict[str, float]) -> str:
    rows = [
        (k.removeprefix("eval_"), v) for k, v in metrics.items() if k in ("eval_accuracy", "eval_mse", "eval_loss")
    ]
    lines = ["| metric | value |", "|---|---:|"] + [f"| {k} | {v:.4f} |" for k, v in rows]
    if "eval_samples" in metrics:
        lines.append(f"| held-out texts | {int(metrics['eval_samples'])} |")
    return "\n".join(lines)


def _auc(value: float | None) -> str:
    return "–" if value is None or value != value else f"{value:.3f}"  # NaN: one class only


def _difference(m: dict) -> str:
    """The model's AUC minus the baseline's, ± DeLong's paired standard error (`paired_auc`), where measured."""
    d, se = m.get("auc_minus_baseline"), m.get("auc_minus_baseline_se")
    if d is None or d != d:
        return "–"
    return f"{d:+.3f}" if se is None or se != se else f"{d:+.3f} ± {se:.3f}"


# Baselines fitted on some held-out sources' very texts: (what it was fitted on, the sources whose rows it has seen).
# alt-profanity-check's SVM was fitted on all of Davidson et al.'s corpus and the Kaggle Jigsaw train set, which the
# offline Davidson and Jigsaw files are drawn from (docs/reward_quality.md §10 measures what that is worth).
BASELINE_TRAINED_ON = {
    "profanity-check": (
        "all of Davidson et al.'s tweets and the Kaggle Jigsaw Toxic Comment train set",
        ("davidson_hate_offensive", "jigsaw_toxic_comment", "jigsaw_toxic_comment_subsets"),
    )
}


def per_source_table(per_source: dict[str, dict]) -> str:
    """Per held-out source: texts, accuracy, MSE, label variance, and ROC AUC (with the baseline's and the paired
    difference to it) when measured."""
    rows = list(per_source.values())
    auc, baseline = any("auc" in m for m in rows), any("baseline_auc" in m for m in rows)
    difference = any("auc_minus_baseline" in m for m in rows)
    name = _baseline_name(per_source)
    fitted_on, seen_sources = BASELINE_TRAINED_ON.get(name, (None, ()))
    head = ["held-out source", "texts", "accuracy", "MSE", "label variance"]
    head += ["ROC AUC"] if auc else []
    head += [f"{name} ROC AUC (baseline)"] if baseline else []
    head += ["AUC − baseline (± SE, paired)"] if difference else []
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for source, m in per_source.items():
        cells = [source, str(m["n"]), f"{m['accuracy']:.3f}", f"{m['mse']:.4f}", f"{m['label_variance']:.4f}"]
        cells += [_auc(m.get("auc"))] if auc else []
        seen = source in seen_sources and m.get("baseline_auc") is not None
        cells += [_auc(m.get("baseline_auc")) + ("†" if seen else "")] if baseline else []
        cells += [_difference(m)] if difference else []
        lines.append("| " + " | ".join(cells) + " |")
    if baseline and any(s in per_source for s in seen_sources):
        lines += ["", f"† on texts {name} was trained on: it was fitted on {fitted_on}, which "
                  "these sources' files are drawn from. A lexical model of its recipe fitted only on this model's "
                  "training texts is measured in the rad_q_hf repository's docs/reward_quality.md §10."]  # fmt: skip
    return "\n".join(lines)


def _baseline_name(per_source: dict[str, dict]) -> str:
    return per_source.get("all", {}).get("baseline", "baseline")


def auc_rows(per_source: dict[str, dict]) -> str:
    """The model's ROC AUC over the held-out texts of all sources; as a baseline row, the lexical judge's on them."""
    overall = per_source.get("all", {})
    if "auc" not in overall:
        return ""
    lines = ["| scorer (the held-out texts of all sources; label ≥ 0.5 positive) | ROC AUC |", "|---|---:|"]
    lines.append(f"| this model | {_auc(overall['auc'])} |")
    if "baseline_auc" in overall:
        lines.append(f"| {_baseline_name(per_source)} (lexical baseline) | {_auc(overall['baseline_auc'])} |")
    return "\n".join(lines)


def shipped_tables(shipped: dict[str, dict]) -> str:
    """README tables of the shipped models from their `per_source.json` (held-out quality, ROC AUC and baseline).

    `shipped` maps a model name to `{"per_source": ..., "delta_mb": ...}`; toxicity models also get a per-source table
    of MSE vs label variance and ROC AUC vs the baseline.
    """
    lines = [
        "| model | method | held-out texts | accuracy at 0.5 | MSE | label variance | ROC AUC | baseline ROC AUC | size (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, info in shipped.items():
        m = info["per_source"]["all"]
        baseline = f"{_auc(m['baseline_auc'])} ({m['baseline']})" if "baseline_auc" in m else "–"
        lines.append(
            f"| `{name}` | {METHOD_TITLES[info.get('method', name.rsplit('-', 1)[0])]} | {m['n']} | {m['accuracy']:.3f} "
            f"| {m['mse']:.3f} | {m['label_variance']:.3f} | {_auc(m.get('auc'))} | {baseline} | {info['delta_mb']:.1f} |"
        )
    toxicity = {name: info["per_source"] for name, info in shipped.items() if name.endswith("toxicity")}
    return "\n".join(lines) + ("\n\n" + toxicity_source_table(toxicity) if toxicity else "")


def toxicity_source_table(per_model: dict[str, dict[str, dict]]) -> str:
    """One row per held-out source: label variance, each model's MSE and ROC AUC, the baseline's ROC AUC, and each
    model's paired AUC difference to it where measured."""
    names = list(per_model)
    first = per_model[names[0]]
    head = ["source", "texts", "label variance", *[f"MSE {n}" for n in names], *[f"AUC {n}" for n in names]]
    head.append(f"AUC {_baseline_name(first)}")
    difference = [n for n in names if any("auc_minus_baseline" in m for m in per_model[n].values())]
    head += [f"AUC {n} − baseline (± SE)" for n in difference]
    lines = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for source, m in first.items():
        cells = [source, str(m["n"]), f"{m['label_variance']:.4f}"]
        cells += [f"{per_model[n][source]['mse']:.4f}" for n in names]
        cells += [_auc(per_model[n][source].get("auc")) for n in names]
        cells.append(_auc(m.get("baseline_auc")))
        cells += [_difference(per_model[n][source]) for n in difference]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_between(text: str, marker: str, content: str) -> str:
    """`text` with what lies between `<!-- marker -->` and `<!-- /marker -->` replaced by `content`."""
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if start not in text or end not in text:
        raise ValueError(f"The text has no {start} ... {end} block to fill.")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{content}\n{end}{rest.split(end, 1)[1]}"


METHOD_TITLES = {"rad-q": "RAD-Q", "rad-v": "RAD-V", "rad-q-trunk": "RAD-Q (LM's trunk)"}


def render_card(name: str, checkpoint_dir: str | Path, *, task: str, method: str, data: str, command: str,
                hyperparameters: str, num_layers: int, lora_r: int | str | None, delta_mb: float,
                per_source: dict[str, dict] | None = None, num_blocks: int = 0) -> ModelCard:  # fmt: skip
    """The card of a shipped reward model, with the metrics of `checkpoint_dir/eval_results.json`.

    For `method="rad-q-trunk"`, `num_layers` is the tap layer L of the LM and `num_blocks` the model's own blocks.
    """
    metrics = json.loads((Path(checkpoint_dir) / "eval_results.json").read_text())
    toxicity = task == "detox"
    trunk = method == "rad-q-trunk"
    if trunk:
        blocks = f"{num_blocks} own transformer block{'s' if num_blocks != 1 else ''}"
        architecture = (
            "It has no backbone of its own: it reads SmolLM2-135M-Instruct's own hidden states at layer "
            f"{num_layers} (captured while that LM generates, so it steers only that LM), then a norm, {blocks} and "
            "RAD-Q's head over the LM's token embeddings"
        )
    else:
        architecture = f"Its backbone is the first {num_layers} layers of SmolLM2-135M-Instruct with LoRA adapters (rank {lora_r})"
    card_data = ModelCardData(
        language="en",
        license="apache-2.0",
        library_name="transformers",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        tags=["reward-model", "rad-q-hf", method, "toxicity" if toxicity else "sentiment"],
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        name=name,
        repo_url=REPO_URL,
        method=method,
        method_long={"rad-q": "RAD-Q (low-rank head)", "rad-v": "RAD-V (value head)"}.get(
            method, "RAD-Q on the LM's own trunk"
        ),
        processor={"rad-q": "RADQ", "rad-v": "RADV"}.get(method, "RADQTrunk"),
        processor_module="rad_q_hf.decoding_trunk" if trunk else "rad_q_hf",
        architecture=architecture,
        attach=".attach_lm(lm)" if trunk else "",
        delta_contents="its norm, own blocks and head; never the LM's weights" if trunk else "LoRA adapters and heads",
        purpose="it scores how toxic a continuation is, to steer generation away from toxicity."
        if toxicity
        else "it scores how positive a text is, to steer generation towards positive or negative sentiment.",
        label="toxicity" if toxicity else "positive",
        content_warning="this reward model was trained on, and is meant to score, offensive and hateful text."
        if toxicity
        else "the training reviews and generated samples may contain offensive language.",
        limitation="Its toxicity labels mix several constructs (toxicity, offensiveness, hate) from different "
        "annotator pools and carry their biases, e.g. false positives on dialect and identity terms."
        if toxicity
        else "Sentiment was learned from product and film reviews; other domains and mixed or ironic sentiment "
        "are scored less reliably.",
        label_meaning="1 = toxic" if toxicity else "1 = positive",
        direction="minimize" if toxicity else "maximize",
        task=task,
        method_training={
            "rad-q": "RAD-Q on responses only (reward of each observed next token after BOS + prefix), cumulative "
            "length-weighted MSE",
            "rad-v": "RAD-V, value of every prefix regressed on the text's label, cumulative length-weighted MSE",
        }.get(
            method,
            "RAD-Q on responses only (the reward of token x_t from the LM's layer state at t − 1, as the LM sees "
            "the text, without BOS; the first token unscored), cumulative length-weighted MSE; the LM stays frozen",
        ),
        data=data,
        hyperparameters=hyperparameters,
        command=command,
        num_layers=num_layers,
        lora_r=lora_r,
        delta_mb=f"{delta_mb:.1f}",
        metrics_table=metrics_table(metrics),
        per_source_table=per_source_table(per_source) if per_source else "",
        per_source_n=(per_source or {}).get("all", {}).get("n", ""),
        auc_table=auc_rows(per_source) if per_source else "",
    )


__all__ = [
    "REPO_URL",
    "TEMPLATE",
    "auc_rows",
    "metrics_table",
    "per_source_table",
    "render_card",
    "replace_between",
    "shipped_tables",
    "toxicity_source_table",
]
