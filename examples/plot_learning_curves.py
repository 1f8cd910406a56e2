"""Plot held-out AUC / MSE against optimizer steps from one or more training runs' log history.

    python examples/plot_learning_curves.py --runs /work/runs/h6-rad-v-toxicity-v2/out --output docs/learning_curves.png
    python examples/plot_learning_curves.py --runs runA runB --labels "lr 1e-3,lr 3e-3" --baseline_auc 0.89
    python examples/plot_learning_curves.py --runs rad-v/stage-2-sst2 rad-q/stage-2-sst2 --metrics accuracy,auc

Each run folder needs a `trainer_state.json` (written at the end of training and in every `checkpoint-N`); runs
trained with `--validation_percent` and `--eval_strategy steps` give validation and test curves. `--baseline_auc`
draws a lexical baseline's AUC (e.g. profanity-check's on the same texts) as a dashed line. Also prints the curves
as JSON.
"""

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from rad_q_hf.evaluation.learning_curves import learning_curves, plot_learning_curves, read_log_history


@dataclass
class PlotArguments:
    runs: list[str] = field(metadata={"help": "Run folders (output_dir of a training run)."})
    labels: str | None = field(default=None, metadata={"help": "Comma-separated names of the runs."})
    output: str = field(default="docs/learning_curves.png", metadata={"help": "The PNG to write."})
    baseline_auc: float | None = field(default=None, metadata={"help": "A baseline's AUC, drawn dashed."})
    metrics: str = field(default="auc,mse", metadata={"help": "Comma-separated panels: auc, mse, accuracy, loss."})


def main(a: PlotArguments) -> dict:
    labels = a.labels.split(",") if a.labels else a.runs
    metrics = tuple(m.strip() for m in a.metrics.split(",") if m.strip())
    runs = {label: learning_curves(read_log_history(run), metrics) for label, run in zip(labels, a.runs, strict=True)}
    if a.baseline_auc is not None:
        steps = [s for curves in runs.values() for points in curves.values() for s, _ in points] or [0]
        runs["profanity-check"] = {"baseline_auc": [(min(steps), a.baseline_auc), (max(steps), a.baseline_auc)]}
    plot_learning_curves(runs, a.output, metrics)
    print(json.dumps(runs, indent=1))
    return runs


if __name__ == "__main__":
    main(HfArgumentParser(PlotArguments).parse_args_into_dataclasses()[0])
