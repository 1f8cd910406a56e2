"""`RewardRegressionTrainer`: RAD's response-only regression of every prefix onto its text's label.

RAD-V regresses the value `r(x≤t)` at every prefix. RAD-Q reads the same prefix reward as the reward of the observed
token `x_t` after `BOS + x<t` (teacher forcing), so one forward scores all prefixes by querying one row of `E` each;
no `(B, T, |V|)` tensor is ever built. Both use the cumulative length-weighted MSE of METHOD.md §2.
"""

import os

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import EvalPrediction, Trainer

from ..data import DataError, RewardDataCollator, check_label_range
from ..modeling_rad_v import cumulative_mse_loss
from ..scoring import config_of, is_rad_q, last_token, prefix_rewards
from .adapters import (
    ADAPTER_DIR,
    ADAPTER_WEIGHTS_NAME,
    LEGACY_TRAINABLE_STATE,
    apply_lora,
    has_lora,
    is_head_parameter,
    load_adapter_state,
    merged_state_dict,
    save_adapter,
    trainable_state_dict,
)
from .reward_config import RewardTrainingConfig


def baseline_prior(out, attention_mask: torch.Tensor, column: int = 1) -> torch.Tensor:
    """Mean over real positions of Σ_j (e_vᵀ W_j h_t)², the token-specific reward of the queried `column` tokens."""
    token_part = out.rewards[..., column] - out.baselines  # (B, T + 1, L)
    mask = torch.cat([attention_mask.new_ones(attention_mask.shape[0], 1), attention_mask], 1).to(token_part.dtype)
    return (token_part.pow(2).sum(-1) * mask).sum() / mask.sum().clamp(min=1)


def roc_auc(scores, labels, threshold: float = 0.5) -> float:
    """ROC AUC of `scores` for the binary labels `labels ≥ threshold` (ties count one half); NaN with one class, and
    with any NaN score (ranking would place it somewhere and report a plausible AUC).

    The Mann-Whitney form: the probability that a random positive outscores a random negative.

    >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    """
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.float64) >= threshold
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0 or np.isnan(s).any():
        return float("nan")
    return float((midranks(s)[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def midranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of `scores`, tied scores sharing their mean rank (what ROC AUC and DeLong's variance count).

    >>> midranks(np.array([0.3, 0.1, 0.3]))
    array([2.5, 1. , 2.5])
    """
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


def compute_reward_metrics(eval_pred: EvalPrediction) -> dict[str, float]:
    """MSE, accuracy and ROC AUC (labels ≥ 0.5 positive) of the first label's reward at each text's last token."""
    preds, labels = np.asarray(eval_pred.predictions)[:, 0], np.asarray(eval_pred.label_ids)[:, 0]
    return {
        "mse": float(np.mean((preds - labels) ** 2)),
        "accuracy": float(np.mean((preds >= 0.5) == (labels >= 0.5))),
        "auc": roc_auc(preds, labels),
    }


class RewardRegressionTrainer(Trainer):
    r"""
    Trains a RAD-V or RAD-Q reward model on labelled text (`input_ids` + `labels` rows, see `rad_q_hf.data`).

    The loss is the cumulative length-weighted MSE over every prefix, summed over labels; for RAD-Q, plus the optional
    baseline prior (`args.regularizer_weight`). Evaluation logs `eval_loss`, and `eval_mse` / `eval_accuracy` of the
    first label at the last token. With `peft_config` the backbone gets LoRA adapters; checkpoints always hold merged
    weights that load with `AutoModel.from_pretrained`, and the adapter in peft's format (`adapter/`), which resumes
    training and loads with `PeftModel.from_pretrained` on the untrained model.

    Example:

    ```python
    >>> import torch
    >>> from datasets import Dataset
    >>> from transformers import GPT2Config
    >>> from rad_q_hf import RadQConfig, RadQForRewardModeling
    >>> from rad_q_hf.training import RewardRegressionTrainer, RewardTrainingConfig
    >>> config = RadQConfig(backbone_config=GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=0))
    >>> data = Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9]] * 8, "labels": [[1.0], [0.0]] * 8})
    >>> args = RewardTrainingConfig("/tmp/rad-q-doc", max_steps=2, per_device_train_batch_size=4, report_to="none")
    >>> trainer = RewardRegressionTrainer(RadQForRewardModeling(config), args, train_dataset=data)
    >>> trainer.train().global_step  # doctest: +ELLIPSIS
    {...}
    2

    ```
    """

    # `compute_loss` returns a per-batch mean: let the Trainer divide by the accumulation steps (5.19+ honours this).
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: nn.Module,
        args: RewardTrainingConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        compute_metrics=compute_reward_metrics,
        callbacks=None,
        optimizers=(None, None),
        peft_config=None,
    ):
        args = args if args is not None else RewardTrainingConfig(output_dir="outputs/reward-model")
        if args.remove_unused_columns:
            raise ValueError("Set `remove_unused_columns=False`: the reward collator needs every column.")
        for name, ds in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            self._check_dataset(name, ds, model)
        if peft_config is not None:
            model = apply_lora(model, peft_config)
        if data_collator is None:
            # Pads are masked out, so any in-vocabulary id will do (configs may carry ids of a bigger tokenizer).
            pad = model.config.pad_token_id
            pad = pad if pad is not None and 0 <= pad < model.config.vocab_size else 0
            data_collator = RewardDataCollator(pad_token_id=pad)
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        self.model_accepts_loss_kwargs = False  # transformers < 5.19 ignores `loss_is_scaled_for_ga`

    @staticmethod
    def _check_dataset(name: str, ds, model: nn.Module) -> None:
        if ds is None or not hasattr(ds, "column_names"):
            return
        for split, d in ds.items() if isinstance(ds, dict) else [(name, ds)]:
            missing = [c for c in ("input_ids", "labels") if c not in d.column_names]
            if missing:
                hint = " Tokenize it first with `rad_q_hf.data.tokenize`." if "text" in d.column_names else ""
                raise DataError(f"`{split}` lacks the column(s) {missing}; it has {d.column_names}.{hint}")
            if len(d) and len(d[0]["labels"]) != model.config.num_labels:
                raise DataError(
                    f"`{split}` rows have {len(d[0]['labels'])} label(s) but the reward model predicts "
                    f"{model.config.num_labels} ({model.config.label_names}); make them match."
                )
            if len(d):  # a tokenized dataset may not have gone through `data.validate`
                check_label_range(torch.tensor(d["labels"], dtype=torch.float64), f"`{split}`")

    def _losses(self, model, inputs) -> dict[str, torch.Tensor]:
        input_ids, mask, labels = inputs["input_ids"], inputs["attention_mask"], inputs["labels"]
        unwrapped = self.accelerator.unwrap_model(model)
        c = self.args.regularizer_weight if is_rad_q(unwrapped) else 0.0
        extra = None
        if c > 0 and model.training:
            B, T = input_ids.shape
            extra = torch.randint(config_of(unwrapped).vocab_size, (B, T + 1, 1), device=input_ids.device)
        rewards, out = prefix_rewards(model, input_ids, mask, extra)  # (B, T, L)
        # A model may score fewer prefixes than real tokens (RAD-Q on the trunk: a text's first token has no state
        # before it); its `reward_mask` says which, else every real token counts.
        scored = getattr(out, "reward_mask", None)
        scored = mask if scored is None else scored
        losses = {"regression": cumulative_mse_loss(rewards, labels, scored), "rewards": rewards}
        losses["loss"] = losses["regression"]
        if extra is not None:
            losses["prior"] = baseline_prior(out, mask)
            losses["loss"] = losses["loss"] + c * losses["prior"]
        return losses

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with the heads in groups of their own when `args.head_learning_rate` is set.

        The scheduler scales each group's own initial rate, so heads and backbone share warm-up and decay.
        """
        if self.optimizer is not None or self.args.head_learning_rate is None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        groups = {}  # (is_head, decays) -> params
        for name, param in opt_model.named_parameters():
            if param.requires_grad:
                groups.setdefault((is_head_parameter(name), name in decay), []).append(param)
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(
            [
                {
                    "params": params,
                    "weight_decay": self.args.weight_decay if decays else 0.0,
                    "lr": self.args.head_learning_rate if head else self.args.learning_rate,
                }
                for (head, decays), params in groups.items()
            ],
            **kwargs,
        )
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        losses = self._losses(model, inputs)
        return (losses["loss"], losses) if return_outputs else losses["loss"]

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            losses = self._losses(model, inputs)
        loss = losses["regression"].detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, last_token(losses["rewards"], inputs["attention_mask"]).detach(), inputs.get("labels")

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if not has_lora(self.model):
            return super()._save(output_dir, state_dict)
        # Merged weights under the plain names (loadable without peft) + the adapter in peft's format to resume from.
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        super()._save(output_dir, state_dict=merged_state_dict(self.model))
        if self.args.should_save:
            save_adapter(self.model, os.path.join(output_dir, ADAPTER_DIR))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        model = model if model is not None else self.model
        if not has_lora(model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        folder = os.path.join(resume_from_checkpoint, ADAPTER_DIR)
        legacy = os.path.join(resume_from_checkpoint, LEGACY_TRAINABLE_STATE)
        if os.path.exists(os.path.join(folder, ADAPTER_WEIGHTS_NAME)):
            state = load_adapter_state(folder)
        elif os.path.exists(legacy):  # saved before adapters were in peft's format: same tensors, the model's names
            folder, state = legacy, load_file(legacy)
        else:
            raise FileNotFoundError(
                f"{os.path.join(folder, ADAPTER_WEIGHTS_NAME)} is missing (and there is no older-format "
                f"{LEGACY_TRAINABLE_STATE}): {resume_from_checkpoint} was not saved from a LoRA run."
            )
        expected = set(trainable_state_dict(model))
        if set(state) != expected:
            raise ValueError(
                f"{folder} does not match this model's trainable parameters (missing {sorted(expected - set(state))[:3]}, "
                f"unexpected {sorted(set(state) - expected)[:3]}); resume with the same LoRA and model options."
            )
        model.load_state_dict(state, strict=False)


__all__ = ["RewardRegressionTrainer", "baseline_prior", "compute_reward_metrics", "midranks", "roc_auc"]
