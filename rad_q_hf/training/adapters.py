"""LoRA on the reward model's backbone through `peft`, saved so that `AutoModel.from_pretrained` needs no peft.

The adapters are injected in place (`peft.inject_adapter_in_model`), so the model keeps its class and the Trainer
sees an ordinary reward model. Checkpoints hold the *merged* weights (`W + BA`) under the plain parameter names, which
load with `AutoModel.from_pretrained`, and, in the `adapter/` sub-folder, the adapter in peft's own format (LoRA on
the backbone, the heads as `modules_to_save`), which resumes training and loads with peft on the untrained model:

    model = PeftModel.from_pretrained(RadQForRewardModeling.from_config_and_backbone(config, base), f"{ckpt}/adapter")

(A sub-folder because transformers' `from_pretrained` would apply an `adapter_config.json` next to `config.json` a
second time on top of the merged weights.) Stages trained one after the other stack into one adapter with peft's
`add_weighted_adapter(combination_type="cat")`, exact for LoRA without rsLoRA (`stack_adapters`).
"""

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

ADAPTER_DIR = "adapter"  # peft's adapter_config.json + adapter_model.safetensors, inside a checkpoint
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
# Checkpoints saved before adapters were in peft's format hold the trainable tensors under the model's own parameter
# names in this file instead; resuming still reads it.
LEGACY_TRAINABLE_STATE = "trainable_state.safetensors"
PEFT_PREFIX = "base_model.model."  # how a PeftModel over the whole reward model names its tensors
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


def _heads(model: nn.Module) -> list[str]:
    return [name for name in HEADS if getattr(model, name, None) is not None]


def to_peft_name(name: str, adapter: str = "default") -> str:
    """`backbone.….q_proj.lora_A.default.weight` → `base_model.model.backbone.….q_proj.lora_A.weight` (peft's file
    names carry no adapter name); heads keep their names under the prefix."""
    return PEFT_PREFIX + name.replace(f".{adapter}.", ".")


def from_peft_name(key: str, adapter: str = "default") -> str:
    """The inverse of `to_peft_name`."""
    name = key.removeprefix(PEFT_PREFIX)
    for part in (".lora_A.", ".lora_B."):
        name = name.replace(part, f"{part}{adapter}.")
    return name


def save_adapter(model: nn.Module, folder: str | os.PathLike) -> None:
    """Write the model's LoRA adapter and heads in peft's format (`PeftModel.from_pretrained` loads them)."""
    config = lora_config_of(model)
    if config is None:
        raise ValueError("This reward model has no LoRA adapters to save.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_config = LoraConfig(**{**config.to_dict(), "modules_to_save": _heads(model)})
    peft_config.base_model_name_or_path = getattr(model.config, "name_or_path", None) or None
    peft_config.save_pretrained(str(folder))
    save_file({to_peft_name(n): t for n, t in trainable_state_dict(model).items()}, folder / ADAPTER_WEIGHTS_NAME)


def load_adapter_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """An adapter folder's tensors under the in-place model's parameter names (`apply_lora`'d), e.g. to resume."""
    return {from_peft_name(k): v for k, v in load_file(Path(folder) / ADAPTER_WEIGHTS_NAME).items()}


def read_adapter_config(folder: str | os.PathLike) -> dict:
    return json.loads((Path(folder) / ADAPTER_CONFIG_NAME).read_text())


def stack_adapters(skeleton: nn.Module, folders: Sequence[str | os.PathLike]) -> tuple[dict, dict[str, torch.Tensor]]:
    """One LoRA adapter equal to the sum of the adapters in `folders` (stages each trained on the previous ones'
    merged weights), by peft's `add_weighted_adapter(..., combination_type="cat")`: `A = [s_1 A_1; s_2 A_2]`,
    `B = [B_1, B_2]`, scaling 1, so `B A = s_1 B_1 A_1 + s_2 B_2 A_2`. Exact with plain LoRA scaling (peft gives the
    stacked adapter `lora_alpha = r`, which rsLoRA would turn into √r) and bit-exact when every `s_i` is a power of 2.

    skeleton: a reward model of the stages' architecture (its weights do not matter; peft wraps it). Returns the
    stacked LoRA config (as a dict) and its tensors under the in-place model's names; heads are not included.
    """
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    peft_model, names = None, []
    for i, folder in enumerate(folders):
        config = LoraConfig(**{**read_adapter_config(folder), "modules_to_save": None})  # heads: the caller's
        config.base_model_name_or_path = skeleton.config.name_or_path  # the skeleton stands in for each stage's base
        if config.use_rslora:
            raise ValueError(f"{folder} uses rsLoRA, which peft's `cat` combination does not stack exactly.")
        state = {k: v for k, v in load_file(Path(folder) / ADAPTER_WEIGHTS_NAME).items() if ".lora_" in k}
        name = f"stage_{i}"
        if peft_model is None:
            peft_model = get_peft_model(skeleton, config, adapter_name=name)
        else:
            peft_model.add_adapter(name, config)
        set_peft_model_state_dict(peft_model, state, adapter_name=name)
        names.append(name)
    if len(names) == 1:
        config, state = read_adapter_config(folders[0]), load_adapter_state(folders[0])
        return config, {k: v for k, v in state.items() if ".lora_" in k}
    peft_model.add_weighted_adapter(names, [1.0] * len(names), "stacked", combination_type="cat")
    stacked = get_peft_model_state_dict(peft_model, adapter_name="stacked")
    return peft_model.peft_config["stacked"].to_dict(), {from_peft_name(k): v for k, v in stacked.items()}


__all__ = [
    "ADAPTER_DIR",
    "apply_lora",
    "from_peft_name",
    "is_head_parameter",
    "load_adapter_state",
    "lora_config",
    "has_lora",
    "merged_state_dict",
    "save_adapter",
    "stack_adapters",
    "to_peft_name",
    "trainable_state_dict",
]
