"""Training RAD reward models: the regression trainer, RAD-V → RAD-Q distillation, LoRA helpers and configs.

Rewards are read through `rad_q_hf.scoring` (prefix rewards, whole-text rewards, candidate values).
"""

from .adapters import apply_lora, has_lora, lora_config, merged_state_dict
from .distillation_trainer import DistillationTrainer
from .reward_config import DistillationConfig, RewardTrainingConfig
from .reward_trainer import RewardRegressionTrainer, compute_reward_metrics

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
]
