"""Held-out quality of any reward-model checkpoint, by source, with ROC AUC and profanity-check's AUC as a baseline.

    python examples/evaluate_reward_model.py --checkpoint /work/runs/h6-rad-v-toxicity-v2/out/checkpoint-300 --output q.json
    python examples/evaluate_reward_model.py --checkpoint rad-v-toxicity --eval_samples 0         # a shipped model, all texts
    python examples/evaluate_reward_model.py --checkpoint rad-v-toxicity --baseline_sees_truncated  # same 64 tokens

Toxicity: the offline corpora's held-out split, the trainer's seeded sample of `--eval_samples` texts (0: all), the
same texts `examples/ship_models.py` evaluates the shipped models on. Sentiment: SST-2 dev, no baseline.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, HfArgumentParser

import rad_q_hf
from rad_q_hf.data import load_sentiment, load_toxicity
from rad_q_hf.evaluation.reward_quality import DEFAULT_BASELINE, held_out_quality
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


def main(a: EvaluateArguments) -> dict:
    toxicity = a.task == "toxicity"
    test = (load_toxicity("offline", a.data_dir) if toxicity else load_sentiment("sst2", a.data_dir))["test"]
    if a.eval_samples and len(test) > a.eval_samples:
        test = test.shuffle(seed=1).select(range(a.eval_samples))  # the trainer's eval sample (seed 1)
    path = a.checkpoint if Path(a.checkpoint).is_dir() else rad_q_hf.default_checkpoint(a.checkpoint)
    model, tokenizer = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    baseline = DEFAULT_BASELINE if toxicity else None
    quality = held_out_quality(
        model, tokenizer, test, a.max_length, baseline, baseline_sees_truncated=a.baseline_sees_truncated
    )
    if a.output:
        Path(a.output).write_text(json.dumps(quality, indent=2) + "\n")
    print(auc_rows(quality), per_source_table(quality), sep="\n\n")
    return quality


if __name__ == "__main__":
    main(HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses()[0])
