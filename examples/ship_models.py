"""Train, export and document the reward models shipped in `rad_q_hf/shipped/` (CPU, about 15-20 min each on 2 cores).

    python examples/ship_models.py --data_dir ../shared/data                       # all four
    python examples/ship_models.py --data_dir ../shared/data --only rad-q-toxicity

Each model: the embedded SmolLM2-135M's first layers with LoRA adapters and a fresh head, trained with the project's
trainer on the offline corpora (fixed held-out splits), exported as an fp16 delta with `export_delta`, and given a
card rendered from the package template (also copied to `model_cards/`). Training runs live in `--work_dir` and
resume when re-run.
"""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, HfArgumentParser

import rad_q_hf  # noqa: F401  (registers the Auto classes)
from rad_q_hf.checkpoints import SHIPPED_DIR, default_checkpoint, export_delta
from rad_q_hf.data import load_sentiment, load_toxicity
from rad_q_hf.model_card import render_card
from rad_q_hf.training import RewardTrainingConfig
from rad_q_hf.training.scripts import (
    DataArguments,
    ModelArguments,
    per_source_metrics,
    train_sentiment,
    train_toxicity,
)

LORA_TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"
TOXICITY_DATA = (
    "the labelled corpora under shared/data/toxicity, mapped to one toxicity score in [0, 1] as its SOURCE.md "
    "suggests: Civil Comments toxic spans (toxicity = annotator fraction; CC0), Jigsaw Toxic Comment subsets "
    "(Wikipedia text CC-BY-SA, labels CC0; repos MIT), Davidson et al. hate/offensive (annotator fraction; MIT), "
    "TweetEval offensive and hate (0/1; no restrictions beyond the tasks' and Twitter's terms), Ruddit "
    "((score + 1) / 2; MIT, Reddit content). Deduplicated; TweetEval's test splits and 5 % of the rest (by a hash "
    "of the text) are held out. Each folder's SOURCE.md gives the exact provenance"
)
SENTIMENT_DATA = (
    "Blitzer et al. (ACL 2007) multi-domain Amazon reviews (title + body; distributed for research, no licence "
    "stated), then SST-2 train (GLUE; Stanford, research use); label 1 = positive; SST-2 dev held out"
)


@dataclass
class ShipArguments:
    data_dir: str = field(default="../shared/data", metadata={"help": "The offline data folder."})
    work_dir: str = field(default="outputs/shipped", metadata={"help": "Where training runs go."})
    only: str | None = field(default=None, metadata={"help": "Comma-separated names to (re)build."})
    num_layers: int = field(default=12, metadata={"help": "Backbone layers kept."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate (LoRA)."})
    rad_q_head_learning_rate: float = field(
        default=3e-4,
        metadata={"help": "Peak learning rate of RAD-Q's heads (eᵀWh moves ~50x faster than a value head per step)."},
    )
    batch_size: int = field(default=32, metadata={"help": "Texts per step."})
    toxicity_steps: int = field(default=500, metadata={"help": "Optimizer steps for toxicity."})
    sentiment_steps: str = field(default="100,2000", metadata={"help": "Steps of the Amazon and SST-2 stages."})
    skip_training: bool = field(default=False, metadata={"help": "Only re-export, re-evaluate and re-render cards."})


def recipe(name: str, a: ShipArguments):
    method, task = name.rsplit("-", 1)  # "rad-q-toxicity" -> ("rad-q", "toxicity")
    model_args = ModelArguments(
        method=method, num_layers=a.num_layers, lora_r=a.lora_r, lora_alpha=2 * a.lora_r,
        lora_target_modules=LORA_TARGETS,
    )  # fmt: skip
    data_args = DataArguments(data_dir=a.data_dir, max_length=64 if task == "toxicity" else 48)
    common = dict(
        output_dir=str(Path(a.work_dir) / name), learning_rate=a.learning_rate, warmup_steps=30,
        head_learning_rate=a.rad_q_head_learning_rate if method == "rad-q" else None,  # RAD-V: one rate
        per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=32, report_to="none",
        save_steps=100, logging_steps=20, dataloader_pin_memory=False,
        train_sampling_strategy="group_by_length",  # batches of similar lengths: far less padding on a CPU
    )  # fmt: skip
    if task == "toxicity":
        return train_toxicity, model_args, data_args, RewardTrainingConfig(**common, max_steps=a.toxicity_steps)
    data_args.source = "amazon,sst2"
    data_args.stage_max_steps = a.sentiment_steps
    return train_sentiment, model_args, data_args, RewardTrainingConfig(**common, max_steps=1)


def evaluate_shipped(name: str, a: ShipArguments, max_length: int) -> dict:
    """Per-source metrics of the *shipped* (fp16 delta, assembled) model on the trainer's held-out sample."""
    data = load_toxicity("offline", a.data_dir) if name.endswith("toxicity") else load_sentiment("sst2", a.data_dir)
    test = data["test"]
    test = test.shuffle(seed=1).select(range(1000)) if len(test) > 1000 else test  # the trainer's eval sample
    path = default_checkpoint(name)
    model, tokenizer = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    return per_source_metrics(model, tokenizer, test, max_length=max_length)


def ship(name: str, a: ShipArguments) -> None:
    run, model_args, data_args, training_args = recipe(name, a)
    if not a.skip_training:
        run(model_args, data_args, training_args)
    trained, earlier = Path(training_args.output_dir), []
    if name.endswith("sentiment"):  # stage 2 trained new adapters on top of stage 1's merged ones: stack both
        trained, earlier = trained / "stage-2-sst2", [trained / "stage-1-amazon"]
    out = SHIPPED_DIR / name
    shutil.rmtree(out, ignore_errors=True)
    export_delta(trained, out, earlier_stages=earlier)
    shutil.copy(trained / "eval_results.json", out / "eval_results.json")
    delta_mb = (out / "delta.safetensors").stat().st_size / 2**20
    per_source = evaluate_shipped(name, a, data_args.max_length)
    (out / "per_source.json").write_text(json.dumps(per_source, indent=2) + "\n")
    steps = a.toxicity_steps if name.endswith("toxicity") else a.sentiment_steps
    heads_lr = f" at lr {training_args.head_learning_rate:g}" if training_args.head_learning_rate else ""
    card = render_card(
        name, out, task="detox" if name.endswith("toxicity") else "positive", method=model_args.method,
        data=TOXICITY_DATA if name.endswith("toxicity") else SENTIMENT_DATA,
        command=f"python examples/ship_models.py --data_dir {a.data_dir} --only {name}",
        hyperparameters=(
            f"LoRA r={a.lora_r}, alpha={2 * a.lora_r} on {LORA_TARGETS} of the first {a.num_layers} layers; heads "
            f"trained fully{heads_lr}; AdamW (0.9, 0.95), eps 1e-12, wd 0.01, clip 2.0, lr {a.learning_rate:g} linear "
            f"with 30 warm-up steps, batch {a.batch_size}, steps {steps}, max length {data_args.max_length} tokens, "
            "seed 1, fp32, CPU"
        ),
        num_layers=a.num_layers, delta_mb=delta_mb, per_source=per_source,
        lora_r=f"{a.lora_r} per stage, stacked to {2 * a.lora_r}" if earlier else str(a.lora_r),
    )  # fmt: skip
    card.save(out / "README.md")
    Path("model_cards").mkdir(exist_ok=True)
    card.save(Path("model_cards") / f"{name}.md")
    print(json.dumps({name: json.loads((out / "eval_results.json").read_text()), "delta_mb": delta_mb}))


if __name__ == "__main__":
    (args,) = HfArgumentParser(ShipArguments).parse_args_into_dataclasses()
    names = (
        args.only.split(",")
        if args.only
        else ["rad-q-toxicity", "rad-v-toxicity", "rad-q-sentiment", "rad-v-sentiment"]
    )
    for model_name in names:
        ship(model_name, args)
