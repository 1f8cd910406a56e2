"""LoRA on the reward model's backbone through `peft`, saved so that `AutoModel.from_pretrained` needs no peft.

The adapters are injected in place (`peft.inject_adapter_in_model`), so the model keeps its class and the Trainer
sees an ordinary reward model. Checkpoints hold the *merged* weights (`W + BA`) under the plain parameter names, which
load with `AutoModel.from_pretrained`, plus the trainable tensors (`TRAINABLE_STATE_NAME`) to resume training.
"""

from collections.abc import Sequence

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

TRAINABLE_STATE_NAME = "trainable_state.safetensors"
LORA_CONFIG_NAME = "lora_config.json"
HEADS = ("value_head", "reward_head", "baseline_head")


def is_head_parameter(name: str) -> bool:
    """Whether a reward model's parameter name belongs to one of its heads (trained fully, never LoRA'd)."""
    return name.split(".")[0] in HEADS


def lora_config(
    r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules: Sequence[str] | str | None = None
) -> LoraConfig:
    """A LoRA config for a reward model's backbone; `target_modules=None` takes peft's defaults for the
    architecture (e.g. `q_proj`, `v_proj` for Llama, `c_attn` for GPT-2)."""
    if isinstance(target_modules, str) and "," in target_modules:
        target_modules = [m.strip() for m in target_modules.split(",") if m.strip()]
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Freeze the backbone, add LoRA adapters to it (in place) and keep the reward heads trainable."""
    if has_lora(model):
        raise ValueError("This reward model already has LoRA adapters.")
    if any(isinstance(m, Conv1D) for m in model.backbone.modules()):
        config.fan_in_fan_out = True  # GPT-2-style Conv1D stores weights transposed
    inject_adapter_in_model(config, model.backbone)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name or is_head_parameter(name))
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the model would have with every LoRA update merged into its base weight (model untouched)."""
    deltas = {
        name: module.get_delta_weight(adapter)
        for name, module in model.named_modules()
        if isinstance(module, BaseTunerLayer)
        for adapter in module.active_adapters
    }
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_" not in key:
            state[key.replace(".base_layer.", ".")] = value
    for name, delta in deltas.items():
        state[f"{name}.weight"] = state[f"{name}.weight"] + delta.to(state[f"{name}.weight"].dtype)
    return state


def lora_config_of(model: nn.Module) -> LoraConfig | None:
    """The LoRA config injected into the model's backbone, if any."""
    configs = getattr(model.backbone, "peft_config", None) or {}
    return next(iter(configs.values()), None)


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


__all__ = [
    "TRAINABLE_STATE_NAME",
    "apply_lora",
    "is_head_parameter",
    "lora_config",
    "has_lora",
    "merged_state_dict",
    "trainable_state_dict",
]
