"""Held-out quality of any reward-model checkpoint, by source, with ROC AUC and profanity-check's AUC as a baseline.

    python examples/evaluate_reward_model.py --checkpoint /work/runs/h6-rad-v-toxicity-v2/out/checkpoint-300 --output q.json
    python examples/evaluate_reward_model.py --checkpoint rad-v-toxicity --eval_samples 0         # a shipped model, all texts
    python examples/evaluate_reward_model.py --checkpoint rad-v-toxicity --baseline_sees_truncated  # same 64 tokens
    python examples/evaluate_reward_model.py --task sentiment --checkpoint RUN_DIR --compare_to rad-v-sentiment

Toxicity: the offline corpora's held-out split, the trainer's seeded sample of `--eval_samples` texts (0: all, the
texts `examples/ship_models.py` evaluates the shipped models on by default; the same N gives the same sample). Sentiment: SST-2 dev, no baseline.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, HfArgumentParser

import rad_q_hf
from rad_q_hf.data import load_sentiment, load_toxicity
from rad_q_hf.evaluation.reward_quality import (
    DEFAULT_BASELINE,
    held_out_predictions,
    paired_accuracy,
    paired_auc,
    quality_of_predictions,
)
from rad_q_hf.model_card import auc_rows, per_source_table


@dataclass
class EvaluateArguments:
    checkpoint: str = field(metadata={"help": "A checkpoint folder or a shipped model's name."})
    task: str = field(default="toxicity", metadata={"help": "`toxicity` or `sentiment`."})
    data_dir: str = field(default="../shared/data", metadata={"help": "The offline data folder."})
    eval_samples: int = field(default=1000, metadata={"help": "Held-out texts (seeded sample; 0: all)."})
    max_length: int = field(default=64, metadata={"help": "Truncate texts to this many tokens."})
    baseline_sees_truncated: bool = field(
        default=False,
        metadata={"help": "Score the baseline on the same `--max_length` tokens the model reads, not the whole text."},
    )
    output: str | None = field(default=None, metadata={"help": "Write the per-source metrics here (JSON)."})
    compare_to: str | None = field(
        default=None,
        metadata={
            "help": "Another checkpoint or shipped name: print the paired accuracy and ROC AUC differences (this "
            "minus that) with their standard errors on the same texts (written to OUTPUT's stem + `.paired.json`)."
        },
    )


def main(a: EvaluateArguments) -> dict:
    toxicity = a.task == "toxicity"
    test = (load_toxicity("offline", a.data_dir) if toxicity else load_sentiment("sst2", a.data_dir))["test"]
    if a.eval_samples and len(test) > a.eval_samples:
        test = test.shuffle(seed=1).select(range(a.eval_samples))  # the trainer's eval sample (seed 1)
    model, tokenizer = _load(a.checkpoint)
    baseline = DEFAULT_BASELINE if toxicity else None
    pred = held_out_predictions(model, tokenizer, test, a.max_length)
    quality = quality_of_predictions(pred, test, tokenizer, a.max_length, baseline, a.baseline_sees_truncated)
    if a.output:
        Path(a.output).write_text(json.dumps(quality, indent=2) + "\n")
    print(auc_rows(quality), per_source_table(quality), sep="\n\n")
    if a.compare_to:
        other, other_tokenizer = _load(a.compare_to)
        other_pred = held_out_predictions(other, other_tokenizer, test, a.max_length)
        labels = [row[0] for row in test["labels"]]
        auc = paired_auc(pred, other_pred, labels)
        paired = {"a": a.checkpoint, "b": a.compare_to, **paired_accuracy(pred, other_pred, labels), "auc": auc}
        print(
            f"accuracy {a.checkpoint} − {a.compare_to}: {paired['difference']:+.4f} ± {paired['standard_error']:.4f} "
            f"(n = {paired['n']}; right only by a: {paired['only_a']}, only by b: {paired['only_b']})\n"
            f"ROC AUC: {auc['auc_a']:.4f} − {auc['auc_b']:.4f} = {auc['difference']:+.4f} ± {auc['standard_error']:.4f}"
        )
        if a.output:
            Path(a.output).with_suffix(".paired.json").write_text(json.dumps(paired, indent=2) + "\n")
    return quality


def _load(name: str):
    """A checkpoint folder, or a shipped model's name, with its tokenizer (in eval mode)."""
    path = name if Path(name).is_dir() else rad_q_hf.default_checkpoint(name)
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


if __name__ == "__main__":
    main(HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses()[0])
