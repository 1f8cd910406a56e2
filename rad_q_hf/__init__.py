"""rad_q_hf: reward-augmented decoding (RAD-V and RAD-Q) for Hugging Face Transformers.

Importing the package registers `rad_v`, `rad_q` and `rad_q_trunk` with `AutoConfig` and `AutoModel`.
"""

from transformers import AutoConfig, AutoModel

from .checkpoints import default_checkpoint, shipped_models
from .configuration_rad_q import RadQConfig
from .configuration_rad_q_trunk import RadQTrunkConfig
from .configuration_rad_v import RadVConfig
from .decoding import RADQ, RADV, RewardAugmentedLogitsProcessor, RewardTerm
from .generation import reward_augmented_generate
from .modeling_rad_q import RadQForRewardModeling
from .modeling_rad_q_trunk import RadQTrunkForRewardModeling
from .modeling_rad_v import RadPreTrainedModel, RadVForRewardModeling, RewardModelOutput, cumulative_mse_loss

__version__ = "0.1.0"

for _config_cls, _model_cls in (
    (RadVConfig, RadVForRewardModeling),
    (RadQConfig, RadQForRewardModeling),
    (RadQTrunkConfig, RadQTrunkForRewardModeling),
):
    AutoConfig.register(_config_cls.model_type, _config_cls, exist_ok=True)
    AutoModel.register(_config_cls, _model_cls, exist_ok=True)
    # Saved checkpoints carry `auto_map` and these files, so `trust_remote_code=True` loads them without this package.
    _config_cls.register_for_auto_class()
    _model_cls.register_for_auto_class("AutoModel")

__all__ = [
    "RADQ",
    "RADV",
    "RewardAugmentedLogitsProcessor",
    "RewardTerm",
    "RadPreTrainedModel",
    "RadQConfig",
    "RadQForRewardModeling",
    "RadQTrunkConfig",
    "RadQTrunkForRewardModeling",
    "RadVConfig",
    "RadVForRewardModeling",
    "RewardModelOutput",
    "cumulative_mse_loss",
    "default_checkpoint",
    "reward_augmented_generate",
    "shipped_models",
]
