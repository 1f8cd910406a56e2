"""The training entry points behind `examples/train_*.py`, `examples/distill.py` (and the `rad-q train` command).

Each run: build the reward model (from a backbone, optionally truncated / with LoRA, or from an earlier checkpoint),
load and tokenize the data, train with resume from the output folder's last checkpoint, save a checkpoint that loads
with `AutoModel.from_pretrained`, and report the held-out loss, MSE and accuracy.
"""

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, HfArgumentParser
from transformers.trainer_utils import get_last_checkpoint

from .. import data as rdata
from ..embedded import EMBEDDED_MODELS, lm_path
from ..modeling_rad_q import RadQForRewardModeling
from ..modeling_rad_v import RadVForRewardModeling
from ..scoring import text_rewards
from .adapters import lora_config
from .distillation_trainer import DistillationTrainer
from .reward_config import DistillationConfig, RewardTrainingConfig
from .reward_trainer import RewardRegressionTrainer

if TYPE_CHECKING:
    from datasets import DatasetDict

METHODS = {"rad-q": RadQForRewardModeling, "rad-v": RadVForRewardModeling}


@dataclass
class ModelArguments:
    method: str = field(default="rad-q", metadata={"help": "Reward model: `rad-q` (low-rank head) or `rad-v`."})
    backbone: str = field(
        default="smollm2-135m",
        metadata={"help": f"Backbone causal LM: an embedded model {list(EMBEDDED_MODELS)}, a local folder or Hub id."},
    )
    num_layers: int | None = field(default=None, metadata={"help": "Keep only the backbone's first N layers."})
    freeze_embeddings: bool = field(default=True, metadata={"help": "RAD-Q: keep the token embeddings E frozen."})
    use_baseline: bool = field(default=True, metadata={"help": "RAD-Q: include the baseline term bᵀh_t."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the backbone (0: full fine-tuning)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: str | None = field(
        default=None, metadata={"help": "Comma-separated module names for LoRA (default: peft's per-architecture)."}
    )
    init_from: str | None = field(
        default=None, metadata={"help": "Start from this reward-model checkpoint instead of a fresh head."}
    )


@dataclass
class DataArguments:
    data_dir: str | None = field(
        default=None,
        metadata={"help": f"Offline data folder (like the project's shared/data); else ${rdata.DATA_ENV}."},
    )
    source: str | None = field(
        default=None,
        metadata={
            "help": "Toxicity: offline | jigsaw | civil_comments. Sentiment: comma-separated stages trained in order, "
            f"from {rdata.SENTIMENT_SOURCES} (default `amazon,sst2`, as in the paper)."
        },
    )
    jigsaw_dir: str | None = field(default=None, metadata={"help": "Folder of the Kaggle Jigsaw UB CSVs."})
    train_file: str | None = field(default=None, metadata={"help": "Your own .jsonl/.csv/.tsv/.parquet to train on."})
    eval_file: str | None = field(default=None, metadata={"help": "Held-out file for `--train_file`."})
    text_column: str = field(default="text", metadata={"help": "Text column of `--train_file`."})
    label_columns: str = field(default="label", metadata={"help": "Comma-separated label columns of `--train_file`."})
    max_length: int = field(default=128, metadata={"help": "Truncate texts to this many tokens."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Train on a seeded sample of N texts."})
    max_eval_samples: int | None = field(default=1000, metadata={"help": "Evaluate on N held-out texts (RAD: 1000)."})
    validation_percent: float = field(
        default=0.0,
        metadata={
            "help": "Carve a validation split of this many percent from train (by a hash of the text): the trainer "
            "then evaluates on validation and test during training (pick hyperparameters on validation only)."
        },
    )
    balance_classes: float = field(
        default=0.0,
        metadata={
            "help": "Oversample each source's rarer class (label ≥ 0.5 or not) to this ratio of the other (0: off)."
        },
    )
    min_words: int = field(
        default=0,
        metadata={
            "help": "Train and validate only on texts of at least N words (test stays whole): e.g. a last SST-2 "
            "stage on its sentence-like phrases (0: every text)."
        },
    )
    stage_max_steps: str | None = field(
        default=None,
        metadata={"help": "Sentiment: comma-separated `max_steps` of each stage (overrides --max_steps)."},
    )


@dataclass
class DistillArguments:
    teacher: str = field(metadata={"help": "The RAD-V checkpoint to distil."})
    task: str = field(default="toxicity", metadata={"help": "Texts to distil on: `toxicity` or `sentiment`."})
    base_model: str | None = field(default=None, metadata={"help": "Causal LM for `--candidate_top_k`."})


def backbone_path(name: str) -> str:
    """An embedded model's converted folder, an existing folder, or a Hub id; a missing path or a near miss of an
    embedded name is a `FileNotFoundError` saying so."""
    return lm_path(name)


def build_reward_model(args: ModelArguments, label_names: list[str]):
    """A fresh reward model on the backbone, or the `init_from` checkpoint; returns (model, tokenizer)."""
    if args.method not in METHODS:
        raise ValueError(f"Unknown method {args.method!r}; choose one of {list(METHODS)}.")
    if args.init_from:
        model = AutoModel.from_pretrained(args.init_from)
        if not isinstance(model, METHODS[args.method]):
            raise ValueError(
                f"--init_from {args.init_from} holds a {type(model).__name__}, not a {args.method} model."
            )
        if model.config.label_names != list(label_names):
            raise ValueError(f"--init_from has labels {model.config.label_names}, the data has {list(label_names)}.")
        tokenizer_source = args.init_from
    else:
        path = backbone_path(args.backbone)
        extra = {}
        if args.method == "rad-q":
            extra = {"freeze_embeddings": args.freeze_embeddings, "use_baseline": args.use_baseline}
        model = METHODS[args.method].from_backbone(path, labels=label_names, num_layers=args.num_layers, **extra)
        tokenizer_source = path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"The tokenizer has {tokenizer.vocab_size} tokens, the model only {model.config.vocab_size}.")
    return model, tokenizer


def peft_config(args: ModelArguments):
    if args.lora_r <= 0:
        return None
    return lora_config(args.lora_r, args.lora_alpha, args.lora_dropout, args.lora_target_modules)


def prepare(ds: "DatasetDict", tokenizer, data_args: DataArguments, num_labels: int | None, seed: int):
    """Tokenize the train / test splits, sampling `max_*_samples` with a fixed seed."""
    out = {}
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    for split, limit in (*limits.items(), ("test", data_args.max_eval_samples)):
        if split not in ds:
            continue
        part = ds[split]
        if limit is not None and limit < len(part):
            part = part.shuffle(seed=seed).select(range(limit))
        if split == "train" and data_args.balance_classes > 0:
            part = rdata.balance_classes(part, data_args.balance_classes, seed=seed)
        out[split] = rdata.tokenize(part, tokenizer, data_args.max_length, num_labels)
    return out


def eval_splits(splits: dict) -> "dict | object | None":
    """What the trainer evaluates on: `{"validation", "test"}` when a validation split exists, else `test`."""
    if "validation" not in splits:
        return splits.get("test")
    return {name: splits[name] for name in ("validation", "test") if name in splits}


def own_files(data_args: DataArguments) -> tuple["DatasetDict", list[str]]:
    columns = [c.strip() for c in data_args.label_columns.split(",") if c.strip()]
    splits = {"train": rdata.load_labelled_file(data_args.train_file, data_args.text_column, columns)}
    if data_args.eval_file:
        splits["test"] = rdata.load_labelled_file(data_args.eval_file, data_args.text_column, columns)
    from datasets import DatasetDict  # lazily: importing the training code must not need `datasets`

    return DatasetDict(splits), columns


def run_regression(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: RewardTrainingConfig,
    dataset: "DatasetDict",
    label_names: list[str],
    model=None,
    tokenizer=None,
) -> dict[str, float]:
    """Train (resuming from the last checkpoint in `output_dir`), save the final model, return held-out metrics."""
    check_run_record(model_args, data_args, training_args)
    if model is None:
        model, tokenizer = build_reward_model(model_args, label_names)
    dataset = rdata.with_validation(dataset, data_args.validation_percent)
    dataset = rdata.min_words(dataset, data_args.min_words)  # after the split: validation keeps its hash bucket
    splits = prepare(dataset, tokenizer, data_args, len(label_names), training_args.seed)
    trainer = RewardRegressionTrainer(
        model,
        training_args,
        train_dataset=splits["train"],
        eval_dataset=eval_splits(splits),
        processing_class=tokenizer,
        peft_config=peft_config(model_args),
    )
    return _train_and_save(trainer, training_args)


# What shapes a run's model: a resume (or a finished stage that is skipped) must have been trained with the same.
# max_steps / num_train_epochs may grow (train on), and where data, logs and checkpoints live may change.
_RECORDED_TRAINING = ("learning_rate", "head_learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio",
                      "weight_decay", "per_device_train_batch_size", "gradient_accumulation_steps", "seed",
                      "regularizer_weight", "train_sampling_strategy")  # fmt: skip
_UNRECORDED_DATA = ("data_dir", "jigsaw_dir", "max_eval_samples", "stage_max_steps")


def check_run_record(model_args, data_args, training_args) -> None:
    """Refuse to resume (or reuse) the run in `output_dir` with settings other than those it was trained with, which
    `run_args.json` there records; record them for a new run. A re-run with another --method or --learning_rate
    would otherwise resume the old checkpoint, or skip a finished stage, and report the old model as the new one."""
    record = {
        "model": asdict(model_args),
        "data": {k: v for k, v in asdict(data_args).items() if k not in _UNRECORDED_DATA},
        "training": {k: getattr(training_args, k, None) for k in _RECORDED_TRAINING},
    }
    now = json.loads(json.dumps(record, default=str))  # as it reads back from the file (tuples as lists, ...)
    path = Path(training_args.output_dir) / "run_args.json"
    if path.exists():
        old = json.loads(path.read_text())
        changed = {f"{group}.{k}": (old[group][k], v) for group, values in now.items()
                   for k, v in values.items() if k in old.get(group, {}) and old[group][k] != v}  # fmt: skip
        if changed:
            listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(
                f"{training_args.output_dir} holds a run trained with other settings ({listing}); resuming it (or "
                "reusing its finished stage) would report that model as this one. Use another --output_dir, the "
                "same settings, or delete the folder to start over."
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(now, indent=2) + "\n")


def _train_and_save(trainer, training_args) -> dict[str, float]:
    last = get_last_checkpoint(training_args.output_dir) if os.path.isdir(training_args.output_dir) else None
    resume = training_args.resume_from_checkpoint or last
    if resume:
        trainer.accelerator.print(f"Resuming from {resume}")
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    trainer.save_state()  # trainer_state.json: the log history a learning curve is plotted from
    held_out = trainer.eval_dataset
    if isinstance(held_out, dict):  # validation + test: report test as before, keep validation beside it
        trainer.save_metrics("validation", trainer.evaluate(held_out["validation"], metric_key_prefix="validation"))
        held_out = held_out.get("test")
    metrics = trainer.evaluate(held_out) if held_out is not None else {}
    trainer.save_metrics("eval", metrics)
    trainer.accelerator.print(json.dumps(metrics, indent=2))
    return metrics


@torch.no_grad()
def per_source_metrics(model, tokenizer, ds, max_length: int = 128, batch_size: int = 32) -> dict[str, dict]:
    """Accuracy at 0.5 and MSE of label 0 at the last token, per `source` of a `text` / `labels` / `source` set."""
    model.eval()
    pred = text_rewards(model, tokenizer, ds["text"], batch_size, max_length)[:, 0].float().cpu()
    label = torch.tensor([row[0] for row in ds["labels"]])
    sources = ds["source"] if "source" in ds.column_names else ["all"] * len(ds)
    out = {}
    for source in sorted(set(sources)) + ["all"]:
        idx = torch.tensor([i for i, s in enumerate(sources) if source in (s, "all")])
        p, y = pred[idx], label[idx]
        out[source] = {
            "n": len(idx),
            "accuracy": float(((p >= 0.5) == (y >= 0.5)).float().mean()),
            "mse": float((p - y).pow(2).mean()),
            "label_variance": float(y.var(unbiased=False)),
        }
    return out


def distributed_args(training_args):
    """`training_args` fit for how the script was launched.

    `accelerate launch --multi_gpu --num_processes N` (or torchrun) starts N processes; on a machine without a GPU the
    Trainer treats them as distributed only with `use_cpu=True`, and otherwise runs N independent trainings that
    overwrite one output folder. Without a GPU this switches to `use_cpu=True` (the processes train together on the
    CPU, in a gloo group), saying so; a launch the Trainer still would not join is an error naming the flag.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1 or training_args.world_size == launched:
        return training_args
    if not training_args.use_cpu and not torch.cuda.is_available():
        training_args = replace(training_args, use_cpu=True)
        _say_cpu(launched)
        if training_args.world_size == launched:
            return training_args
    raise ValueError(
        f"{launched} processes were launched, but the Trainer would run {launched} independent trainings into one "
        f"output folder (it sees a world size of {training_args.world_size}). On a CPU-only machine add --use_cpu "
        "true; on GPUs launch at most one process per GPU (accelerate launch --num_processes)."
    )


def end_distributed() -> None:
    """Leave the process group cleanly once every process is done: exiting with it still open can abort a rank
    ("terminate called without an active exception") after the work has finished, failing the launcher."""
    from accelerate import PartialState

    state = PartialState()
    state.wait_for_everyone()
    state.destroy_process_group()


def train_toxicity(model_args: ModelArguments, data_args: DataArguments, training_args: RewardTrainingConfig):
    """RAD-V or RAD-Q toxicity reward model (labels: `toxicity`, or the 7 Jigsaw attributes)."""
    training_args = distributed_args(training_args)
    if data_args.train_file:
        dataset, labels = own_files(data_args)
    else:
        source = data_args.source or "offline"
        dataset = rdata.load_toxicity(source, data_args.data_dir, jigsaw_dir=data_args.jigsaw_dir)
        labels = rdata.toxicity_label_names(source)
    return run_regression(model_args, data_args, training_args, dataset, labels)


def train_sentiment(model_args: ModelArguments, data_args: DataArguments, training_args: RewardTrainingConfig):
    """Sentiment reward model (label `positive`), trained on each source in turn (the paper: Amazon, then SST-2).

    Stage i writes to `<output_dir>/stage-i-<source>` and starts from stage i−1's model; a finished stage is skipped
    on re-runs, an interrupted one resumes from its last checkpoint. The last stage's model is copied to `output_dir`.
    """
    training_args = distributed_args(training_args)
    if data_args.train_file:
        dataset, labels = own_files(data_args)
        return run_regression(model_args, data_args, training_args, dataset, labels)
    sources = [s.strip() for s in (data_args.source or "amazon,sst2").split(",") if s.strip()]
    steps = [int(n) for n in data_args.stage_max_steps.split(",")] if data_args.stage_max_steps else None
    if steps is not None and len(steps) != len(sources):
        raise ValueError(f"--stage_max_steps has {len(steps)} values for {len(sources)} stages ({sources}).")
    root = Path(training_args.output_dir)
    previous, metrics = None, {}
    for i, source in enumerate(sources, 1):
        dataset = rdata.load_sentiment(source, data_args.data_dir)  # fails early on unknown sources
        stage_dir = root / f"stage-{i}-{source.replace(':', '_')}"
        stage_model_args = model_args if previous is None else replace(model_args, init_from=str(previous))
        stage_args = replace(training_args, output_dir=str(stage_dir))
        if steps is not None:
            stage_args = replace(stage_args, max_steps=steps[i - 1])
        if (stage_dir / "eval_results.json").exists():  # finished: reused, if trained with these settings
            check_run_record(stage_model_args, data_args, stage_args)
            metrics = json.loads((stage_dir / "eval_results.json").read_text())
        else:
            metrics = run_regression(stage_model_args, data_args, stage_args, dataset, ["positive"])
        previous = stage_dir
    model = AutoModel.from_pretrained(previous)
    model.save_pretrained(root)
    AutoTokenizer.from_pretrained(previous).save_pretrained(root)
    (root / "eval_results.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def distill(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: DistillationConfig,
    teacher: str,
    task: str = "toxicity",
    base_model: str | None = None,
):
    """Distil the RAD-V checkpoint `teacher` into a RAD-Q student on the task's texts."""
    training_args = distributed_args(training_args)
    teacher_model = AutoModel.from_pretrained(teacher)
    if getattr(teacher_model.config, "model_type", None) != "rad_v":
        raise ValueError(f"--teacher {teacher} is a {teacher_model.config.model_type} model, not a RAD-V one.")
    labels = teacher_model.config.label_names
    if data_args.train_file:
        dataset, _ = own_files(data_args)
    elif task == "toxicity":
        dataset = rdata.load_toxicity(
            data_args.source or "offline", data_args.data_dir, jigsaw_dir=data_args.jigsaw_dir
        )
    elif task == "sentiment":
        dataset = rdata.load_sentiment(data_args.source or "sst2", data_args.data_dir)
    else:
        raise ValueError(f"Unknown task {task!r}; choose `toxicity` or `sentiment`.")
    model_args = replace(model_args, method="rad-q")
    student, tokenizer = build_reward_model(model_args, labels)
    lm = None
    if training_args.candidate_top_k:
        lm = AutoModelForCausalLM.from_pretrained(backbone_path(base_model or model_args.backbone))
    if AutoConfig.from_pretrained(teacher).vocab_size != student.config.vocab_size:
        raise ValueError("The teacher's and the student's vocabularies differ; use the same backbone tokenizer.")
    # The teacher gives the targets: the data's own labels are checked, then dropped.
    splits = prepare(dataset, tokenizer, data_args, None, training_args.seed)
    splits = {name: part.remove_columns("labels") for name, part in splits.items()}
    trainer = DistillationTrainer(
        student,
        teacher_model,
        training_args,
        base_model=lm,
        train_dataset=splits["train"],
        eval_dataset=splits.get("test"),
        processing_class=tokenizer,
        peft_config=peft_config(model_args),
    )
    return _train_and_save(trainer, training_args)


def parser_for(what: str, prog: str | None = None) -> HfArgumentParser:
    """The flags of `rad-q train <what>` / the example scripts: `toxicity`, `sentiment` or `distill`."""
    if what == "distill":
        types = (DistillArguments, ModelArguments, DataArguments, DistillationConfig)
    else:
        types = (ModelArguments, DataArguments, RewardTrainingConfig)
    parser = HfArgumentParser(types)
    parser.prog = prog or parser.prog
    return parser


def run(what: str, argv: list[str] | None = None, prog: str | None = None) -> dict[str, float]:
    """Parse `argv` into the `what` script's dataclasses, train, and leave the process group."""
    had_group = torch.distributed.is_available() and torch.distributed.is_initialized()
    argv = _cpu_launch(sys.argv[1:] if argv is None else list(argv))
    parsed = parser_for(what, prog).parse_args_into_dataclasses(argv)
    if what == "distill":
        d, model_args, data_args, training_args = parsed
        metrics = distill(model_args, data_args, training_args, d.teacher, d.task, d.base_model)
    else:
        metrics = (train_toxicity if what == "toxicity" else train_sentiment)(*parsed)
    if not had_group:  # the group this run's training arguments created; a caller's own group stays open
        end_distributed()
    return metrics


def _cpu_launch(argv: list[str]) -> list[str]:
    """Several processes launched without a GPU and without `--use_cpu`: add it before the training arguments are
    built, so that the processes train together (see `distributed_args`, which checks the result)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1 or torch.cuda.is_available() or any(a.startswith(("--use_cpu", "--use-cpu")) for a in argv):
        return argv
    _say_cpu(launched)
    return [*argv, "--use_cpu", "true"]


def _say_cpu(launched: int) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"{launched} processes launched on a machine without a GPU: they train together on the CPU "
              "(--use_cpu true).", file=sys.stderr)  # fmt: skip


def main(what: str, argv: list[str] | None = None) -> int:
    """An example script's `__main__`: a user error (missing data, a wrong flag value) is one line
    `<script>: error: ...` and exit status 2, not a traceback from every process.

    Under a multi-process launch every process usually fails alike: the first one prints at once; the others wait
    a moment first, so that the launcher, stopping them when the first one exits, leaves that one line.
    """
    prog = Path(sys.argv[0]).name
    try:
        run(what, argv, prog)
    except (ValueError, OSError) as error:  # DataError, missing files and folders, wrong models
        if os.environ.get("RANK", "0") != "0":
            time.sleep(_QUIET_SECONDS)
        print(f"{prog}: error: {error}", file=sys.stderr)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # this script's group: exiting with it open can abort
        return 2
    return 0


_QUIET_SECONDS = 10.0


__all__ = [
    "distributed_args",
    "end_distributed",
    "main",
    "parser_for",
    "run",
    "DataArguments",
    "DistillArguments",
    "ModelArguments",
    "build_reward_model",
    "distill",
    "per_source_metrics",
    "run_regression",
    "train_sentiment",
    "train_toxicity",
]
