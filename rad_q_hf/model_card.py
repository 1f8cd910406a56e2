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


def per_source_table(per_source: dict[str, dict]) -> str:
    lines = ["| held-out source | texts | accuracy | MSE | label variance |", "|---|---:|---:|---:|---:|"]
    for source, m in per_source.items():
        lines.append(f"| {source} | {m['n']} | {m['accuracy']:.3f} | {m['mse']:.4f} | {m['label_variance']:.4f} |")
    return "\n".join(lines)


def render_card(name: str, checkpoint_dir: str | Path, *, task: str, method: str, data: str, command: str,
                hyperparameters: str, num_layers: int, lora_r: int | str, delta_mb: float,
                per_source: dict[str, dict] | None = None) -> ModelCard:  # fmt: skip
    """The card of a shipped reward model, with the metrics of `checkpoint_dir/eval_results.json`."""
    metrics = json.loads((Path(checkpoint_dir) / "eval_results.json").read_text())
    toxicity = task == "detox"
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
        method_long="RAD-Q (low-rank head)" if method == "rad-q" else "RAD-V (value head)",
        processor="RADQ" if method == "rad-q" else "RADV",
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
        method_training="RAD-Q on responses only (reward of each observed next token after BOS + prefix), "
        "cumulative length-weighted MSE"
        if method == "rad-q"
        else "RAD-V, value of every prefix regressed on the text's label, cumulative length-weighted MSE",
        data=data,
        hyperparameters=hyperparameters,
        command=command,
        num_layers=num_layers,
        lora_r=lora_r,
        delta_mb=f"{delta_mb:.1f}",
        metrics_table=metrics_table(metrics),
        per_source_table=per_source_table(per_source) if per_source else "",
    )


__all__ = ["REPO_URL", "TEMPLATE", "metrics_table", "per_source_table", "render_card"]
