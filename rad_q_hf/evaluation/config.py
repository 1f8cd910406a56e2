"""`EvaluationConfig`: one `rad-q evaluate` run (its fields are the command's flags), and its settings."""

import os
from dataclasses import dataclass, field

from .judges import check_judge_name
from .perspective import API_KEY_ENV
from .prompts import DEFAULT_PROMPTS

# task -> (shipped reward model per method, the label names it steers, direction); `rad-q generate` uses the same
# table. A reward model is steered on the first of the names it has (`models.task_label`).
TASKS = {
    "detox": (
        {"rad-q": "rad-q-toxicity", "rad-v": "rad-v-toxicity", "rad-q-trunk": "rad-q-trunk-toxicity"},
        ("toxicity", "toxic"),  # the offline corpora's label; Jigsaw's first attribute
        "minimize",
    ),
    "positive": (
        {"rad-q": "rad-q-sentiment", "rad-v": "rad-v-sentiment", "rad-q-trunk": "rad-q-trunk-sentiment"},
        ("positive",),
        "maximize",
    ),
    "negative": (
        {"rad-q": "rad-q-sentiment", "rad-v": "rad-v-sentiment", "rad-q-trunk": "rad-q-trunk-sentiment"},
        ("positive",),
        "minimize",
    ),
}
METHODS = ("none", "rad-q", "rad-v", "rad-q-trunk")
# method -> the reward model's `model_type` (rad-q-trunk: RAD-Q on the steered LM's own hidden states, issue 15)
MODEL_TYPES = {"rad-q": "rad_q", "rad-v": "rad_v", "rad-q-trunk": "rad_q_trunk"}
# fields that shape the samples: a re-run into the same folder must keep them (num_prompts may grow, β may be added)
SAMPLING_FIELDS = ("task", "samples_per_prompt", "max_new_tokens", "top_k", "prompts", "lm", "rad_q_model",
                   "rad_v_model", "rad_q_trunk_model", "prompts_per_batch", "seed")  # fmt: skip


class EvaluationError(ValueError):
    """A run that cannot go on as configured (conflicting resume, missing prompts, wrong reward model)."""


@dataclass
class EvaluationConfig:
    """One evaluation run: every (method, β) setting on the same prompts, seeds and judges.

    `rad-q evaluate` parses its flags into this class with `HfArgumentParser` (`--num_prompts` and `--num-prompts`
    alike); `methods` and `betas` also take comma-separated values (`--method none,rad-q --beta 10,20`).

    Example:

    ```python
    >>> config = EvaluationConfig(task="detox", methods=["none", "rad-q"], betas=[10.0, 50.0], num_prompts=2)
    >>> [s.name for s in config.settings()]
    ['none', 'rad-q_b10', 'rad-q_b50']

    ```
    """

    task: str = field(
        default="detox",
        metadata={
            "help": "detox (RTP non-toxic prompts), positive, negative (neutral prompts).",
            "choices": list(TASKS),
        },
    )
    methods: list[str] = field(
        default_factory=lambda: list(METHODS),
        metadata={
            "aliases": ["--method"],
            "help": "Methods to run: some of none, rad-q, rad-v, rad-q-trunk (or comma-separated).",
        },
    )
    betas: list[float] = field(
        default_factory=lambda: [10.0],
        metadata={"aliases": ["--beta"], "help": "β values for the guided methods, e.g. 10 20 50 (or 10,20,50)."},
    )
    num_prompts: int = field(default=100, metadata={"help": "The first N prompts of the set."})
    samples_per_prompt: int = field(default=25, metadata={"help": "Continuations sampled per prompt."})
    max_new_tokens: int = field(default=20, metadata={"help": "Tokens per continuation."})
    top_k: int = field(default=20, metadata={"help": "Top-k sampling (the RAD candidate set; unguided too)."})
    prompts: str | None = field(
        default=None,
        metadata={"help": "A shipped set (rtp-nontoxic, sentiment-neutral, ...) or a JSONL file (default by task)."},
    )
    lm: str = field(default="smollm2-135m", metadata={"help": "The steered LM: embedded name, folder or Hub id."})
    rad_q_model: str | None = field(
        default=None, metadata={"help": "RAD-Q reward model (default: the task's shipped one)."}
    )
    rad_v_model: str | None = field(
        default=None, metadata={"help": "RAD-V reward model (default: the task's shipped one)."}
    )
    rad_q_trunk_model: str | None = field(
        default=None,
        metadata={"help": "RAD-Q-on-the-trunk reward model (default: the task's shipped one; it needs its own LM)."},
    )
    toxicity_judge: str = field(
        default="profanity-check", metadata={"help": "profanity-check | perspective | hf:<model>[#label]."}
    )
    sentiment_judge: str = field(default="vader", metadata={"help": "vader | distilbert-sst2 | hf:<model>[#label]."})
    fluency_lm: str = field(
        default="gemma3-270m", metadata={"help": "Perplexity judge: gemma3-270m, a causal LM id or folder, or none."}
    )
    prompts_per_batch: int = field(default=4, metadata={"help": "Prompts per generate call (× samples rows)."})
    seed: int = field(default=0, metadata={"help": "Base seed; prompt batch b uses seed · 1000003 + b."})
    device: str = field(default="cpu", metadata={"help": "cpu | cuda.", "choices": ["cpu", "cuda"]})
    output: str = field(default="outputs/evaluate", metadata={"help": "Output folder; a re-run resumes in it."})

    def __post_init__(self):
        self.methods = _split_commas(self.methods)
        self.betas = [_number(b) for b in _split_commas(self.betas)]
        if self.task not in TASKS:
            raise EvaluationError(f"Unknown task {self.task!r}: use one of {sorted(TASKS)}.")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise EvaluationError(f"Unknown method(s) {unknown}: use some of {list(METHODS)}.")
        for name in ("num_prompts", "samples_per_prompt", "max_new_tokens", "top_k", "prompts_per_batch"):
            if getattr(self, name) < 1:
                raise EvaluationError(f"`{name}` must be ≥ 1, got {getattr(self, name)}.")
        if any(m != "none" for m in self.methods) and not self.betas:
            raise EvaluationError("Guided methods need at least one β.")
        self.prompts = self.prompts or DEFAULT_PROMPTS[self.task]
        if self.task == "detox":
            check_judge_name("toxicity", self.toxicity_judge)
            if self.toxicity_judge == "perspective" and not os.environ.get(API_KEY_ENV):
                raise EvaluationError(f"--toxicity-judge perspective needs ${API_KEY_ENV}.")
        else:
            check_judge_name("sentiment", self.sentiment_judge)

    def settings(self) -> list["Setting"]:
        out = [Setting("none", 0.0)] if "none" in self.methods else []
        return out + [Setting(m, float(b)) for m in self.methods if m != "none" for b in self.betas]

    @property
    def metric(self) -> str:
        """The task's headline metric, the one methods are compared on."""
        return "avg_max_toxicity" if self.task == "detox" else "positive_rate"

    def reward_model_name(self, method: str) -> str:
        return getattr(self, f"{method.replace('-', '_')}_model") or TASKS[self.task][0][method]


def _split_commas(values) -> list:
    """`"a,b"`, `["a,b", "c"]` or `(1.0, 2.0)` -> a flat list, strings cut at commas."""
    values = [values] if isinstance(values, str | int | float) else list(values)
    out = []
    for value in values:
        out += [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else [value]
    return out


def _number(value) -> float:
    try:
        return float(value)
    except ValueError as error:
        raise EvaluationError(f"--beta takes comma-separated numbers (or several), got {value!r}.") from error


@dataclass(frozen=True)
class Setting:
    method: str
    beta: float

    @property
    def name(self) -> str:
        return "none" if self.method == "none" else f"{self.method}_b{self.beta:g}"


__all__ = ["METHODS", "MODEL_TYPES", "SAMPLING_FIELDS", "TASKS", "EvaluationConfig", "EvaluationError", "Setting"]
