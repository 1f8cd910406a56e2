"""Training arguments of RAD reward models, with the reference implementations' defaults (METHOD.md §7)."""

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class RewardTrainingConfig(TrainingArguments):
    r"""
    [`TrainingArguments`] for [`RewardRegressionTrainer`], defaulting to RAD's recipe: AdamW with betas (0.9, 0.95),
    eps 1e-12, weight decay 0.01, gradient-norm clip 2.0, a linear schedule, lr 2e-5, one epoch, seed 1.

    RAD-Q sentiment used lr 1e-5 and RAD-V a 1000-step warm-up (`warmup_steps=1000`); the reference evaluated every
    1000 (RAD-V) or 200 (RAD-Q) steps on 1000 held-out examples.

    Example:

    ```python
    >>> from rad_q_hf.training import RewardTrainingConfig
    >>> args = RewardTrainingConfig(output_dir="outputs/rad-q", regularizer_weight=1.0)
    >>> args.adam_beta2, args.max_grad_norm, args.remove_unused_columns
    (0.95, 2.0, False)

    ```
    """

    learning_rate: float = field(
        default=2e-5, metadata={"help": "Peak learning rate (RAD: 2e-5; RAD-Q sentiment 1e-5)."}
    )
    adam_beta2: float = field(default=0.95, metadata={"help": "AdamW beta2 (RAD: 0.95)."})
    adam_epsilon: float = field(default=1e-12, metadata={"help": "AdamW epsilon (RAD: 1e-12)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (RAD: 0.01)."})
    max_grad_norm: float = field(default=2.0, metadata={"help": "Gradient-norm clip (RAD: 2.0)."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the training set (RAD: 1)."})
    seed: int = field(default=1, metadata={"help": "Random seed (RAD: 1)."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    # The collator's `attention_mask` and float `labels` are not arguments the Trainer can infer from forward.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every dataset column for the collator (must stay False)."}
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "Input keys holding the regression targets."}
    )
    regularizer_weight: float = field(
        default=0.0,
        metadata={
            "help": "RAD-Q only: weight c of the baseline prior c·(e_vᵀ W h_t)², pushing the token-specific reward of "
            "one uniformly drawn token per position towards 0 (the reference uses c = 1 when enabled)."
        },
    )

    head_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the reward heads (RAD-Q's W and b, RAD-V's value head); default: "
            "`learning_rate`. RAD-Q's bilinear eᵀWh moves by ~lr·‖e‖₁‖h‖₁ per Adam step, so with LoRA-sized rates "
            "its W wants a far smaller one than the adapters."
        },
    )

    def __post_init__(self):
        if self.head_learning_rate is not None and self.head_learning_rate <= 0:
            raise ValueError(f"`head_learning_rate` must be > 0, got {self.head_learning_rate}.")
        if self.regularizer_weight < 0:
            raise ValueError(f"`regularizer_weight` must be ≥ 0, got {self.regularizer_weight}.")
        if self.remove_unused_columns:
            raise ValueError(
                "`remove_unused_columns=True` would drop `attention_mask`/`labels` before the reward collator; "
                "leave it False."
            )
        super().__post_init__()


@dataclass
class DistillationConfig(RewardTrainingConfig):
    r"""
    [`RewardTrainingConfig`] for [`DistillationTrainer`]: a frozen RAD-V teacher, a RAD-Q student.

    The loss is the unweighted MSE between the student's rewards of the observed next tokens and the teacher's values
    of the same prefixes (as in the RAD-Q reference). With `candidate_top_k > 0` the student also matches the
    teacher on the base LM's top-k next tokens at every position, the candidates RAD decoding will actually score.

    Example:

    ```python
    >>> from rad_q_hf.training import DistillationConfig
    >>> DistillationConfig(output_dir="outputs/distil", candidate_top_k=20).candidate_weight
    1.0

    ```
    """

    candidate_top_k: int = field(
        default=0,
        metadata={"help": "Also distil on the base LM's top-k next tokens per position (0: observed tokens only)."},
    )
    candidate_weight: float = field(default=1.0, metadata={"help": "Weight of the top-k candidate term."})

    def __post_init__(self):
        if self.candidate_top_k < 0 or self.candidate_weight < 0:
            raise ValueError("`candidate_top_k` and `candidate_weight` must be ≥ 0.")
        super().__post_init__()


__all__ = ["DistillationConfig", "RewardTrainingConfig"]
