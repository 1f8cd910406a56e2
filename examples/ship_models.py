"""Train, export and document the reward models shipped in `rad_q_hf/shipped/` (CPU; 1-2 h per model on one core).

    python examples/ship_models.py --data_dir ../shared/data                       # all six
    python examples/ship_models.py --data_dir ../shared/data --only rad-q-toxicity
    python examples/ship_models.py --data_dir ../shared/data --refresh_cards      # re-evaluate, re-render only
    python examples/ship_models.py --cards_only                                   # re-render from per_source.json
    python examples/ship_models.py --data_dir ../shared/data --only rad-q-trunk-toxicity,rad-q-trunk-sentiment

Each model: the embedded SmolLM2-135M's first layers with LoRA adapters and a fresh head, trained with the project's
trainer on the offline corpora (fixed held-out splits), exported as an fp16 delta with `export_delta`, and given a
card rendered from the package template (also copied to `model_cards/`). Training runs live in `--work_dir` and
resume when re-run. The held-out evaluation (`per_source.json`) covers every held-out text, by source, with ROC AUC and
(toxicity) `alt-profanity-check`'s ROC AUC on the same texts as a baseline; the README's shipped table is rendered from
those files between its `<!-- shipped-table -->` markers.

The `rad-q-trunk-*` models (RAD-Q on the LM's own trunk, issue 15) have no backbone: they are trained by
`examples/trunk_grid.py` (the LM's layer-L states computed once, then the norm, own blocks and head trained on them
with the trainer's loss) for the one cell `--trunk_tap_layer` × `--trunk_blocks`, and shipped whole in fp16.
"""

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import trunk_grid  # examples/trunk_grid.py, next to this script
from transformers import AutoModel, AutoTokenizer, HfArgumentParser

import rad_q_hf  # noqa: F401  (registers the Auto classes)
from rad_q_hf.checkpoints import SHIPPED_DIR, default_checkpoint, export_delta
from rad_q_hf.data import load_sentiment, load_toxicity
from rad_q_hf.evaluation.learning_curves import best_checkpoint, checkpoint_step, logged_at_step, read_log_history
from rad_q_hf.evaluation.reward_quality import DEFAULT_BASELINE, held_out_quality
from rad_q_hf.model_card import render_card, replace_between, shipped_tables
from rad_q_hf.training import RewardTrainingConfig
from rad_q_hf.training.scripts import (
    DataArguments,
    ModelArguments,
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
    num_layers: int | None = field(
        default=None, metadata={"help": "Backbone layers kept (default: 12, or the sentiment model's recipe)."}
    )
    lora_r: int | None = field(
        default=None, metadata={"help": "LoRA rank (per stage for sentiment; default: the model's recipe)."}
    )
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate (LoRA)."})
    rad_q_head_learning_rate: float = field(
        default=3e-4,
        metadata={"help": "Peak learning rate of RAD-Q's heads (eᵀWh moves ~50x faster than a value head per step)."},
    )
    batch_size: int = field(default=32, metadata={"help": "Texts per step."})
    toxicity_steps: int | None = field(
        default=None, metadata={"help": "Toxicity: optimizer steps (default: the model's TOXICITY_RECIPES)."}
    )
    sentiment_steps: str | None = field(
        default=None,
        metadata={"help": "Steps of the Amazon and SST-2 stages (default: the model's SENTIMENT_RECIPES)."},
    )
    sentiment_lr_scheduler: str | None = field(
        default=None, metadata={"help": "Sentiment: the learning-rate schedule (default: the model's recipe)."}
    )
    sentiment_validation_percent: float | None = field(
        default=None,
        metadata={
            "help": "Sentiment: percent of each stage's train split held out for validation; the SST-2 stage's "
            "checkpoint with the best validation accuracy is shipped (0: its last step; default: the model's recipe)."
        },
    )
    sentiment_eval_steps: int = field(default=500, metadata={"help": "Sentiment: evaluate and save every N steps."})
    skip_training: bool = field(default=False, metadata={"help": "Only re-export, re-evaluate and re-render cards."})
    cards_only: bool = field(
        default=False,
        metadata={"help": "Only re-render the cards and the README table from the stored per_source.json files."},
    )
    refresh_cards: bool = field(
        default=False,
        metadata={"help": "Only re-evaluate the shipped models and re-render their cards and the README table."},
    )
    eval_samples: int = field(
        default=0, metadata={"help": "Held-out texts evaluated (the trainer's seeded sample of N; 0: all of them)."}
    )
    readme: str = field(default="README.md", metadata={"help": "The README whose shipped table is re-rendered."})
    trunk_tap_layer: int | None = field(
        default=None, metadata={"help": "rad-q-trunk-*: the LM layer whose states are read (default: TRUNK_RECIPES)."}
    )
    trunk_blocks: int | None = field(default=None, metadata={"help": "rad-q-trunk-*: own transformer blocks on top."})
    trunk_train_texts: int | None = field(
        default=None, metadata={"help": "rad-q-trunk-*: training texts (seeded sample)."}
    )
    trunk_epochs: int | None = field(default=None, metadata={"help": "rad-q-trunk-*: epochs over them."})
    trunk_head_learning_rate: float | None = field(default=None, metadata={"help": "rad-q-trunk-*: peak rate of W."})
    trunk_learning_rate: float | None = field(
        default=None, metadata={"help": "rad-q-trunk-*: peak rate of the blocks and norm."}
    )


# Each sentiment model's own recipe (backbone layers, steps of the Amazon and SST-2 stages, schedule, validation
# percent), which `--num_layers` and the `--sentiment_*` flags override. RAD-Q's was retrained on 2026-11-28 on 18
# layers, cosine, with the checkpoint picked on validation: SST-2 dev 0.864 -> 0.898, +0.034 ± 0.011 paired
# (docs/reward_quality.md §6); RAD-V's retrainings (two epochs; 18 and 24 layers: 0.886, 0.893, 0.896 vs 0.889)
# did not measurably beat its first recipe.
class SentimentRecipe(NamedTuple):
    num_layers: int
    stage_steps: str  # Amazon, SST-2
    lr_scheduler: str
    validation_percent: float
    lora_r: int = 16  # per stage; the shipped delta stacks both stages' adapters (rank 2r)


SENTIMENT_RECIPES = {
    "rad-v-sentiment": SentimentRecipe(12, "100,2000", "linear", 0.0),
    "rad-q-sentiment": SentimentRecipe(18, "100,2000", "cosine", 5.0),
}


# Each toxicity model's recipe. `max_steps` -1 trains `epochs` passes over all training texts; with a validation
# split, the validation and test samples (`max_eval_samples` each) are scored every `eval_steps`, a checkpoint is kept
# at each (the last `save_total_limit`), and the one with the best validation ROC AUC is shipped.
class ToxicityRecipe(NamedTuple):
    max_steps: int
    epochs: float
    lr_scheduler: str
    warmup_steps: int
    validation_percent: float
    eval_steps: int = 50
    max_eval_samples: int = 250
    save_total_limit: int = 8
    lora_r: int = 16


# Both retrained on 2026-11-28 (v2: one epoch of all 74,742 training texts instead of 500 steps; docs/reward_quality.md
# §7): per-source ROC AUC up on Davidson, Ruddit and TweetEval offensive, MSE below the label variance on Civil
# Comments, Ruddit and Davidson; the pooled AUC fell slightly (TweetEval hate's shifted test split).
TOXICITY_RECIPES = {
    "rad-v-toxicity": ToxicityRecipe(-1, 1, "cosine", 50, 5.0),
    "rad-q-toxicity": ToxicityRecipe(-1, 1, "cosine", 50, 5.0),
}


# Each trunk model's recipe (docs/trunk.md round 2, picked on validation), which the `--trunk_*` flags override.
# Before these, the flags' defaults were the recipe, so re-rendering a card with `--skip_training` wrote another
# model's command into it (rad-q-trunk-toxicity's card said tap layer 18; its weights read layer 24).
class TrunkRecipe(NamedTuple):
    tap_layer: int
    blocks: int
    train_texts: int
    epochs: int
    learning_rate: float  # blocks and norm
    head_learning_rate: float  # W


TRUNK_RECIPES = {
    "rad-q-trunk-toxicity": TrunkRecipe(24, 1, 16384, 2, 1e-3, 1e-4),
    "rad-q-trunk-sentiment": TrunkRecipe(18, 1, 16384, 4, 1e-3, 1e-4),
}
DEFAULT_NUM_LAYERS = 12
TRUNK_NAMES = ("rad-q-trunk-toxicity", "rad-q-trunk-sentiment")
NAMES = ("rad-q-toxicity", "rad-v-toxicity", "rad-q-sentiment", "rad-v-sentiment", *TRUNK_NAMES)


def num_layers(name: str, a: ShipArguments) -> int:
    """Backbone layers of a model: `--num_layers`, else its sentiment recipe's, else `DEFAULT_NUM_LAYERS`."""
    if a.num_layers is not None:
        return a.num_layers
    return SENTIMENT_RECIPES[name].num_layers if name in SENTIMENT_RECIPES else DEFAULT_NUM_LAYERS


def lora_rank(name: str, a: ShipArguments) -> int:
    """LoRA rank of a model (per stage for sentiment): `--lora_r`, else its recipe's."""
    if a.lora_r is not None:
        return a.lora_r
    return (SENTIMENT_RECIPES.get(name) or TOXICITY_RECIPES[name]).lora_r


def recipe(name: str, a: ShipArguments):
    method, task = name.rsplit("-", 1)  # "rad-q-toxicity" -> ("rad-q", "toxicity")
    model_args = ModelArguments(
        method=method, num_layers=num_layers(name, a), lora_r=lora_rank(name, a), lora_alpha=2 * lora_rank(name, a),
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
        r = TOXICITY_RECIPES[name]
        common.update(
            max_steps=r.max_steps if a.toxicity_steps is None else a.toxicity_steps, num_train_epochs=r.epochs,
            lr_scheduler_type=r.lr_scheduler, warmup_steps=r.warmup_steps,
        )  # fmt: skip
        if r.validation_percent > 0:  # validation and test curves, a checkpoint at every point
            data_args.validation_percent, data_args.max_eval_samples = r.validation_percent, r.max_eval_samples
            common.update(
                eval_strategy="steps", eval_steps=r.eval_steps, save_steps=r.eval_steps,
                save_total_limit=r.save_total_limit, per_device_eval_batch_size=50,
            )  # fmt: skip
        return train_toxicity, model_args, data_args, RewardTrainingConfig(**common)
    steps, scheduler, validation_percent = sentiment_recipe(name, a)
    data_args.source, data_args.stage_max_steps = "amazon,sst2", steps
    data_args.validation_percent = validation_percent
    common.update(lr_scheduler_type=scheduler)
    if validation_percent > 0:  # validation and SST-2 dev curves, a checkpoint at every point
        common.update(eval_strategy="steps", eval_steps=a.sentiment_eval_steps, save_steps=a.sentiment_eval_steps)
    return train_sentiment, model_args, data_args, RewardTrainingConfig(**common, max_steps=1)


def sentiment_recipe(name: str, a: ShipArguments) -> tuple[str, str, float]:
    """(stage steps, schedule, validation percent) of a sentiment model: its `SENTIMENT_RECIPES` entry, as overridden."""
    r = SENTIMENT_RECIPES[name]
    return (
        a.sentiment_steps or r.stage_steps,
        a.sentiment_lr_scheduler or r.lr_scheduler,
        r.validation_percent if a.sentiment_validation_percent is None else a.sentiment_validation_percent,
    )


def trunk_recipe(name: str, a: ShipArguments) -> TrunkRecipe:
    """A trunk model's `TRUNK_RECIPES` entry with the `--trunk_*` flags that were given put in."""
    given = {field: getattr(a, f"trunk_{field}") for field in TrunkRecipe._fields}
    return TRUNK_RECIPES[name]._replace(**{k: v for k, v in given.items() if v is not None})


def trunk_grid_arguments(name: str, a: ShipArguments) -> trunk_grid.GridArguments:
    task = name.rsplit("-", 1)[1]
    work, r = Path(a.work_dir), trunk_recipe(name, a)
    return trunk_grid.GridArguments(
        data_dir=a.data_dir, out=str(work / name), tasks=task, layers=str(r.tap_layer), blocks=str(r.blocks),
        train_texts=r.train_texts, epochs=r.epochs, head_learning_rate=r.head_learning_rate,
        learning_rate=r.learning_rate, cache_dir=str(work / "trunk-states"), save_dir=str(work / name / "models"),
    )  # fmt: skip


def ship_trunk(name: str, a: ShipArguments) -> None:
    grid = trunk_grid_arguments(name, a)
    if not a.skip_training:
        trunk_grid.main(grid)
    cell = f"{grid.tasks}/L{grid.layers}/b{grid.blocks}"
    metrics = json.loads((Path(grid.out) / "grid.json").read_text())[cell]
    out = SHIPPED_DIR / name
    shutil.rmtree(out, ignore_errors=True)
    export_delta(Path(grid.save_dir) / cell.replace("/", "-"), out)
    eval_results = {
        "eval_accuracy": metrics["accuracy"],
        "eval_mse": metrics["mse"],
        "eval_roc_auc": metrics["roc_auc"],
    }
    (out / "eval_results.json").write_text(json.dumps(eval_results, indent=2) + "\n")
    evaluate_and_document(name, a)
    print(json.dumps({name: eval_results, "delta_mb": delta_mb(out)}))


def evaluate_shipped(name: str, a: ShipArguments, max_length: int) -> dict:
    """Per-source quality of the *shipped* (fp16 delta, assembled) model on the held-out texts (`--eval_samples`).

    Toxicity models also get `alt-profanity-check`'s ROC AUC on the same texts (`baseline_auc`).
    """
    toxicity = name.endswith("toxicity")
    data = load_toxicity("offline", a.data_dir) if toxicity else load_sentiment("sst2", a.data_dir)
    test = data["test"]
    if 0 < a.eval_samples < len(test):
        test = test.shuffle(seed=1).select(range(a.eval_samples))  # the trainer's eval sample (seed 1)
    path = default_checkpoint(name)
    model, tokenizer = AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    baseline = DEFAULT_BASELINE if toxicity else None
    return held_out_quality(model, tokenizer, test, max_length=max_length, baseline=baseline)


def write_trunk_card(name: str, a: ShipArguments, out: Path, per_source: dict) -> None:
    toxicity = name.endswith("toxicity")
    grid = trunk_grid_arguments(name, a)
    config = json.loads((out / "config.json").read_text())
    if (int(grid.layers), int(grid.blocks)) != (config["tap_layer"], config["num_blocks"]):
        raise ValueError(
            f"{out} reads layer {config['tap_layer']} with {config['num_blocks']} own blocks, but the recipe for its "
            f"card says layer {grid.layers} with {grid.blocks}: the card would describe another model. Pass the "
            "--trunk_* flags it was trained with, or rebuild it without --skip_training / --refresh_cards."
        )
    card = render_card(
        name, out, task="detox" if toxicity else "positive", method="rad-q-trunk",
        data=TOXICITY_DATA if toxicity else "SST-2 train (GLUE; Stanford, research use); label 1 = positive; SST-2 dev held out",
        command=f"python examples/ship_models.py --data_dir {a.data_dir} --only {name} --trunk_tap_layer "
        f"{grid.layers} --trunk_blocks {grid.blocks} --trunk_train_texts {grid.train_texts} --trunk_epochs "
        f"{grid.epochs} --trunk_learning_rate {grid.learning_rate:g} --trunk_head_learning_rate "
        f"{grid.head_learning_rate:g}",
        hyperparameters=(
            f"tap layer {config['tap_layer']}, {config['num_blocks']} own blocks, tap norm {config['tap_norm']!r}; "
            f"{grid.train_texts} training texts (seeded sample) × {grid.epochs} epochs, batch {grid.batch_size}; "
            f"AdamW (0.9, 0.95), eps 1e-12, wd 0.01, clip 2.0; W at lr {grid.head_learning_rate:g}, the baseline "
            f"at {grid.baseline_learning_rate:g}, blocks and norm at {grid.learning_rate:g}, 30 warm-up steps then "
            f"linear decay; max length {64 if toxicity else 48} tokens; seed {grid.seed}, fp32, CPU"
        ),
        num_layers=config["tap_layer"], num_blocks=config["num_blocks"], lora_r=None, delta_mb=delta_mb(out),
        per_source=per_source,
    )  # fmt: skip
    card.save(out / "README.md")
    Path("model_cards").mkdir(exist_ok=True)
    card.save(Path("model_cards") / f"{name}.md")


def write_card(name: str, a: ShipArguments, out: Path, per_source: dict) -> None:
    """Render the card of the shipped model in `out` (and its copy in `model_cards/`)."""
    if name in TRUNK_NAMES:
        return write_trunk_card(name, a, out, per_source)
    _, model_args, data_args, training_args = recipe(name, a)
    stacked = name.endswith("sentiment")  # stage 2's adapters stacked on stage 1's
    r = lora_rank(name, a)
    shipped_r = json.loads((out / "delta.json").read_text())["lora"]["r"]
    if shipped_r != (2 * r if stacked else r):  # the card's recipe would describe another model than the weights
        raise ValueError(
            f"{name}: the shipped delta has LoRA rank {shipped_r}, the recipe says {r}{' per stage' if stacked else ''}. "
            "Pass the --lora_r it was trained with, or set it in the model's recipe in this script."
        )
    if stacked:
        steps = f"steps {sentiment_recipe(name, a)[0]}"
    elif training_args.max_steps > 0:  # the Trainer's max_steps overrides its epochs
        steps = f"steps {training_args.max_steps}"
    else:
        epochs = training_args.num_train_epochs
        steps = "one epoch over all of train" if epochs == 1 else f"{epochs:g} epochs over all of train"
    heads_lr = f" at lr {training_args.head_learning_rate:g}" if training_args.head_learning_rate else ""
    step = json.loads((out / "eval_results.json").read_text()).get("step")
    picked = ""
    if step is not None and data_args.validation_percent > 0:
        split, which, metric = (
            ("each stage's train split", "the SST-2 stage's checkpoint", "accuracy")
            if stacked
            else ("train", "the checkpoint", "ROC AUC")
        )
        kept = f", of the last {training_args.save_total_limit} kept" if training_args.save_total_limit else ""
        picked = (
            f"; {data_args.validation_percent:g} % of {split} held out for validation (by a hash of the text), {which} "
            f"with the best validation {metric} shipped (step {step}, of one every {training_args.save_steps}{kept})"
        )
    card = render_card(
        name, out, task="detox" if name.endswith("toxicity") else "positive", method=model_args.method,
        data=SENTIMENT_DATA if stacked else TOXICITY_DATA,
        command=f"python examples/ship_models.py --data_dir {a.data_dir} --only {name}",
        hyperparameters=(
            f"LoRA r={r}, alpha={2 * r} on {LORA_TARGETS} of the first {model_args.num_layers} layers; heads "
            f"trained fully{heads_lr}; AdamW (0.9, 0.95), eps 1e-12, wd 0.01, clip 2.0, lr {a.learning_rate:g} "
            f"{training_args.lr_scheduler_type.value} with {training_args.warmup_steps} warm-up steps, batch "
            f"{a.batch_size}, {steps}, "
            f"max length {data_args.max_length} tokens, seed 1, fp32, CPU{picked}"
        ),
        num_layers=model_args.num_layers, delta_mb=delta_mb(out), per_source=per_source,
        lora_r=f"{r} per stage, stacked to {2 * r}" if stacked else str(r),
    )  # fmt: skip
    card.save(out / "README.md")
    Path("model_cards").mkdir(exist_ok=True)
    card.save(Path("model_cards") / f"{name}.md")


def delta_mb(out: Path) -> float:
    return (out / "delta.safetensors").stat().st_size / 2**20


def evaluate_and_document(name: str, a: ShipArguments) -> None:
    """Re-evaluate the shipped model in `SHIPPED_DIR / name` and re-render its card."""
    out = SHIPPED_DIR / name
    max_length = 64 if name.endswith("toxicity") else 48  # as trained (`recipe`, `trunk_grid`)
    per_source = evaluate_shipped(name, a, max_length)
    (out / "per_source.json").write_text(json.dumps(per_source, indent=2) + "\n")
    write_card(name, a, out, per_source)


def document_stored(name: str, a: ShipArguments, out: Path | None = None) -> None:
    """Re-render the card of the shipped model in `out` (default: `SHIPPED_DIR / name`) from its `per_source.json`."""
    out = out or SHIPPED_DIR / name
    write_card(name, a, out, json.loads((out / "per_source.json").read_text()))


def picked_checkpoint(run_dir: Path, curve: str = "validation_accuracy") -> tuple[Path, dict]:
    """The run's checkpoint that scored best on `curve`, and its test metrics as `eval_results.json` names them
    (plus the step and the validation score it was picked by)."""
    checkpoint = best_checkpoint(run_dir, curve)
    step = checkpoint_step(checkpoint)
    logged = logged_at_step(read_log_history(run_dir), step)
    results = {k.replace("eval_test_", "eval_"): v for k, v in logged.items() if k.startswith("eval_test_")}
    return checkpoint, {**results, "step": step, f"eval_{curve}": logged[f"eval_{curve}"]}


def ship(name: str, a: ShipArguments) -> None:
    run, model_args, data_args, training_args = recipe(name, a)
    if not a.skip_training:
        run(model_args, data_args, training_args)
    trained, earlier = Path(training_args.output_dir), []
    if name.endswith("sentiment"):  # stage 2 trained new adapters on top of stage 1's merged ones: stack both
        trained, earlier = trained / "stage-2-sst2", [trained / "stage-1-amazon"]
    if data_args.validation_percent > 0:  # ship the checkpoint picked on validation
        curve = "validation_accuracy" if name.endswith("sentiment") else "validation_auc"
        trained, results = picked_checkpoint(trained, curve)
    else:
        results = json.loads((trained / "eval_results.json").read_text())
    out = SHIPPED_DIR / name
    shutil.rmtree(out, ignore_errors=True)
    export_delta(trained, out, earlier_stages=earlier)
    (out / "eval_results.json").write_text(json.dumps(results, indent=2) + "\n")
    evaluate_and_document(name, a)
    print(json.dumps({name: json.loads((out / "eval_results.json").read_text()), "delta_mb": delta_mb(out)}))


def update_readme(path: str) -> None:
    """Re-render the README's shipped-model tables from every shipped model's `per_source.json`."""
    shipped = {
        n: {
            "per_source": json.loads((SHIPPED_DIR / n / "per_source.json").read_text()),
            "delta_mb": delta_mb(SHIPPED_DIR / n),
            "method": n.rsplit("-", 1)[0],
        }
        for n in NAMES
        if (SHIPPED_DIR / n / "per_source.json").is_file()
    }
    readme = Path(path)
    readme.write_text(replace_between(readme.read_text(), "shipped-table", shipped_tables(shipped)))


if __name__ == "__main__":
    (args,) = HfArgumentParser(ShipArguments).parse_args_into_dataclasses()
    for model_name in args.only.split(",") if args.only else NAMES:
        if args.cards_only:
            document_stored(model_name, args)
        elif args.refresh_cards:
            evaluate_and_document(model_name, args)
        else:
            (ship_trunk if model_name in TRUNK_NAMES else ship)(model_name, args)
    update_readme(args.readme)
