"""`DistillationTrainer`: a RAD-Q student fitted to a frozen RAD-V teacher (METHOD.md §5b).

Along the text, the student's reward of the observed token x_t after BOS + x<t regresses the teacher's value of
x≤t, with a plain unweighted MSE. Beyond the reference code, the student can also match the teacher on the base LM's
top-k next tokens at every position (`candidate_top_k`): the teacher scores all `(T + 1)·k` candidate prefixes of
a text in one forward (`rad_q_hf.scoring.candidate_values`).
"""

import torch
from torch import nn

from ..scoring import candidate_values, is_rad_q, prefix_rewards, with_bos
from .reward_config import DistillationConfig
from .reward_trainer import RewardRegressionTrainer, baseline_prior


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (pred − target)² over real positions (mask (B, T), broadcast over trailing dims)."""
    mask = mask.to(pred.dtype).reshape(*mask.shape, *[1] * (pred.dim() - mask.dim())).expand_as(pred)
    return ((pred - target).pow(2) * mask).sum() / mask.sum().clamp(min=1)


class DistillationTrainer(RewardRegressionTrainer):
    r"""
    Distils a frozen RAD-V `teacher_model` into a RAD-Q student (`model`) on tokenized text (`input_ids`; any
    `labels` are ignored).

    Loss: `mean (q_t − r^T_t)²` over real positions and labels, `+ candidate_weight · mean (q(x<t, v) − r^T(x<t ⊕ v))²`
    over the base LM's top-`candidate_top_k` tokens `v` (needs `base_model`, a causal LM with the same vocabulary),
    `+ regularizer_weight ·` the baseline prior. Evaluation reports the same loss as `eval_loss`.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from transformers import GPT2Config
    >>> from rad_q_hf import RadQConfig, RadQForRewardModeling, RadVConfig, RadVForRewardModeling
    >>> from rad_q_hf.training import DistillationConfig, DistillationTrainer
    >>> backbone = GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=0)
    >>> teacher = RadVForRewardModeling(RadVConfig(backbone_config=backbone))
    >>> student = RadQForRewardModeling(RadQConfig(backbone_config=backbone))
    >>> data = Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9]] * 4})  # the teacher gives the targets
    >>> args = DistillationConfig("/tmp/distil-doc", max_steps=1, per_device_train_batch_size=4, report_to="none")
    >>> DistillationTrainer(student, teacher, args, train_dataset=data).train().global_step  # doctest: +ELLIPSIS
    {...}
    1

    ```
    """

    def __init__(
        self,
        model: nn.Module,
        teacher_model: nn.Module,
        args: DistillationConfig | None = None,
        *,
        base_model: nn.Module | None = None,
        **kwargs,
    ):
        args = args if args is not None else DistillationConfig(output_dir="outputs/distillation")
        if not is_rad_q(model) or getattr(teacher_model.config, "model_type", None) != "rad_v":
            raise ValueError("DistillationTrainer distils a RAD-V `teacher_model` into a RAD-Q `model`.")
        if teacher_model.config.num_labels != model.config.num_labels:
            raise ValueError(
                f"Teacher labels {teacher_model.config.label_names} and student labels {model.config.label_names} "
                "differ in number; build the student with the teacher's label names."
            )
        vocabs = {"student": model.config.vocab_size, "teacher": teacher_model.config.vocab_size}
        if getattr(args, "candidate_top_k", 0):
            if base_model is None:
                raise ValueError("`candidate_top_k > 0` needs `base_model`, the causal LM whose top-k is distilled.")
            vocabs["base_model"] = base_model.get_output_embeddings().weight.shape[0]
        if len(set(vocabs.values())) > 1:
            raise ValueError(f"Vocabulary sizes differ: {vocabs}; all models must share one tokenizer.")
        kwargs.setdefault("compute_metrics", None)
        super().__init__(model, args, **kwargs)
        self.teacher = teacher_model.to(self.args.device).eval().requires_grad_(False)
        self.base_model = base_model.to(self.args.device).eval().requires_grad_(False) if base_model else None

    @staticmethod
    def _check_dataset(name, ds, model) -> None:
        if ds is not None and hasattr(ds, "column_names") and "input_ids" not in ds.column_names:
            raise ValueError(f"`{name}` lacks `input_ids`; tokenize it first with `rad_q_hf.data.tokenize`.")

    def _losses(self, model, inputs) -> dict[str, torch.Tensor]:
        input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
        B, T = input_ids.shape
        k = self.args.candidate_top_k
        c = self.args.regularizer_weight
        extra = []
        if k:
            with torch.no_grad():
                ids, full_mask = with_bos(self.teacher, input_ids, mask)
                positions = (full_mask.cumsum(-1) - 1).clamp(min=0)  # real tokens only: any padding side
                logits = self.base_model(input_ids=ids, attention_mask=full_mask, position_ids=positions).logits
                candidates = logits.topk(k, dim=-1).indices  # (B, T + 1, k)
            extra.append(candidates)
        if c > 0 and model.training:
            extra.append(torch.randint(self.teacher.config.vocab_size, (B, T + 1, 1), device=input_ids.device))
        student, out = prefix_rewards(model, input_ids, mask, torch.cat(extra, -1) if extra else None)  # (B, T, L)
        with torch.no_grad():
            target = self.teacher(input_ids=input_ids, attention_mask=mask).rewards  # (B, T, L)
        loss = masked_mse(student, target, mask)
        losses = {"observed": loss}
        if k:
            full_mask = torch.cat([mask.new_ones(B, 1), mask], 1)  # position p = 0..T has a real prefix
            cand_target = candidate_values(self.teacher, input_ids, mask, candidates)  # (B, T + 1, k, L)
            cand_student = out.rewards[:, :, :, 1 : 1 + k].transpose(-1, -2)  # (B, T + 1, k, L)
            losses["candidates"] = masked_mse(cand_student, cand_target, full_mask)
            loss = loss + self.args.candidate_weight * losses["candidates"]
        if c > 0 and model.training:
            losses["prior"] = baseline_prior(out, mask, column=out.rewards.shape[-1] - 1)
            loss = loss + c * losses["prior"]
        losses["loss"] = losses["regression"] = loss
        losses["rewards"] = student
        return losses


__all__ = ["DistillationTrainer", "masked_mse"]
