"""Training RAD reward models: the regression trainer, RAD-V → RAD-Q distillation, LoRA helpers and configs."""

from .adapters import apply_lora, has_lora, lora_config, merged_state_dict
from .distillation_trainer import DistillationTrainer, teacher_candidate_values
from .reward_config import DistillationConfig, RewardTrainingConfig
from .reward_trainer import RewardRegressionTrainer, compute_reward_metrics, prefix_rewards

__all__ = [
    "DistillationConfig",
    "DistillationTrainer",
    "RewardRegressionTrainer",
    "RewardTrainingConfig",
    "apply_lora",
    "compute_reward_metrics",
    "has_lora",
    "lora_config",
    "merged_state_dict",
    "prefix_rewards",
    "teacher_candidate_values",
]
