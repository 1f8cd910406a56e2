"""RAD-V: a causal reward model with a linear value head (Deng & Raffel, EMNLP 2023).

`r_t = W h_t + b` scores every prefix `x≤t` in one pass, so RAD decoding can score the LM's top-k candidates by
appending each to the cached prefix. The file also holds what RAD-Q shares with it: the output class, the
cumulative length-weighted MSE and the backbone plumbing (padding-aware positions, cache keyword, truncation).
Imports only torch, transformers and siblings, so it also works as Hub remote code.
"""

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .compat import cache_kwarg, output_cache
from .configuration_rad_v import RadVConfig


@dataclass
class RewardModelOutput(ModelOutput):
    """
    Args:
        loss: cumulative length-weighted MSE against `labels`, when they were given.
        rewards: RAD-V `(B, T, n_labels)`, one reward per prefix; RAD-Q `(B, T, n_labels, k)` for `k` queried tokens
            or `(B, T, n_labels, |V|)` for every vocabulary token. Raw regression values (clamp them to [0, 1]).
        cache: the backbone's KV cache, when `use_cache`.
        last_hidden_state: the backbone's last hidden states `(B, T, d)`, the `h_t` the heads read.
        hidden_states: as in transformers, the backbone's per-layer hidden states (a tuple of `(B, T, d)`, the
            embeddings first), only with `output_hidden_states=True`.
        attentions: as in transformers, the per-layer attention weights, only with `output_attentions=True`.
        baselines: RAD-Q only, the token-independent part `b_jᵀ h_t` of every reward, `(B, T, n_labels)` (zeros
            without a baseline head); `rewards − baselines[..., None]` is the token-specific part `e_vᵀ W_j h_t`.
    """

    loss: torch.FloatTensor | None = None
    rewards: torch.FloatTensor | None = None
    cache: object | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    baselines: torch.FloatTensor | None = None


def cumulative_mse_loss(rewards: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """RAD's loss: `mean_i Σ_t w_t Σ_j (r_tj − y_j)²` with `w_t = t / Σ_t t` over each text's real tokens.

    Every prefix regresses the whole text's label and later prefixes weigh more (`w_t = 2t / (L(L+1))`).
    rewards: (B, T, L) per-prefix predictions; labels: (B, L); mask: (B, T), 1 on real positions, any padding side.
    """
    mask = mask.to(rewards.dtype)
    t = mask.cumsum(-1) * mask  # (B, T) 1..L on real tokens, 0 on pads
    weights = t / t.sum(-1, keepdim=True).clamp(min=1)  # (B, T)
    sq_err = (rewards - labels[:, None, :].to(rewards.dtype)).pow(2).sum(-1)  # (B, T)
    return (weights * sq_err).sum(-1).mean()


class RadPreTrainedModel(PreTrainedModel):
    """Shared plumbing of RAD-V and RAD-Q: a base (headless) backbone and helpers to run it."""

    config_class = RadVConfig
    base_model_prefix = "backbone"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True

    def __init__(self, config: RadVConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if config.backbone_config is None:
            raise ValueError(f"{type(self).__name__} needs `config.backbone_config` (the causal backbone's config).")
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config.backbone_config)

    def save_pretrained(self, save_directory, *args, **kwargs):
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            self.write_custom_generate(save_directory)

    @staticmethod
    def write_custom_generate(save_directory) -> None:
        """Put `custom_generate/generate.py` into a reward-model folder, so that
        `lm.generate(custom_generate=<folder>, trust_remote_code=True)` steers with it. The template ships with
        rad_q_hf; run as remote code (no package) this file has none and writes nothing."""
        template = Path(__file__).parent / "templates" / "custom_generate.py"
        if template.is_file():
            (Path(save_directory) / "custom_generate").mkdir(exist_ok=True)
            shutil.copy(template, Path(save_directory) / "custom_generate" / "generate.py")

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.set_input_embeddings(value)

    def _check_labels(self, labels: torch.Tensor, batch_size: int) -> None:
        if labels.shape != (batch_size, self.config.num_labels):
            raise ValueError(
                f"`labels` must have shape (batch, n_labels) = ({batch_size}, {self.config.num_labels}) with one "
                f"target per label {self.config.label_names}, got {tuple(labels.shape)}."
            )

    @staticmethod
    def _batch_shape(input_ids: torch.Tensor) -> tuple[int, int]:
        if input_ids.dim() != 2:
            raise ValueError(f"`input_ids` must have shape (batch, seq_len), got {tuple(input_ids.shape)}.")
        return input_ids.shape

    def encode(self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None):
        """Run the backbone. Returns last hidden states (B, T, d) and the cache.

        With an `attention_mask` covering past + new tokens and no `position_ids`, positions count real tokens only
        (`cumsum(mask) − 1`), so a left-padded row scores exactly like the same row without padding.
        """
        out = self._run_backbone(input_ids, attention_mask, position_ids, cache, use_cache)
        return out.last_hidden_state, (output_cache(out) if use_cache is not False else None)

    def _run_backbone(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        cache=None,
        use_cache=None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
    ):
        """`encode`'s backbone call, returning the backbone's whole output (per-layer states / attentions on request)."""
        self._batch_shape(input_ids)
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        kwargs = {cache_kwarg(self.backbone): cache} if cache is not None else {}
        # Only pass the output flags that were asked for: the backbone then falls back on its own config as usual.
        if output_hidden_states is not None:
            kwargs["output_hidden_states"] = output_hidden_states
        if output_attentions is not None:
            kwargs["output_attentions"] = output_attentions
        return self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )

    def _output(self, out, use_cache: bool | None, return_dict: bool | None, **fields) -> RewardModelOutput | tuple:
        """The `RewardModelOutput` of a forward whose backbone output was `out` (a tuple with `return_dict=False`)."""
        output = RewardModelOutput(
            cache=output_cache(out) if use_cache is not False else None,
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            **fields,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    @classmethod
    def from_backbone(
        cls,
        name_or_path: str,
        labels: list[str] | tuple[str, ...] = ("score",),
        num_layers: int | None = None,
        *,
        dtype: torch.dtype | str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        **config_kwargs,
    ) -> "RadPreTrainedModel":
        """A reward model whose backbone holds a pretrained causal LM's weights, with a freshly initialised head.

        Args:
            name_or_path: a Hub id (e.g. `"gpt2"`) or a local folder of a causal LM
                (`rad_q_hf.embedded.resolve("smollm2-135m")` gives the embedded SmolLM2 offline).
            labels: the reward outputs' names.
            num_layers: keep only the first `num_layers` blocks.
            config_kwargs: further options of the config class (e.g. `use_baseline=False` for RAD-Q).
        """
        load_kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
        backbone_config = AutoConfig.from_pretrained(name_or_path, **load_kwargs)
        config = cls.config_class(
            backbone_config=backbone_config, label_names=labels, num_layers=num_layers, **config_kwargs
        )
        return cls.from_config_and_backbone(config, name_or_path, dtype=dtype, **load_kwargs)

    @classmethod
    def from_config_and_backbone(
        cls, config: RadVConfig, name_or_path: str, *, dtype: torch.dtype | str | None = None, **load_kwargs
    ) -> "RadPreTrainedModel":
        """A reward model with this `config` whose backbone weights come from the causal LM at `name_or_path`."""
        # Loading the causal LM (not the base model) also gives the LM head, which RAD-Q needs when it is untied.
        # Truncation leaves the dropped layers' weights unused; that load report is expected, so keep it quiet.
        verbosity = logging.get_verbosity()
        if config.num_layers is not None:
            logging.set_verbosity_error()
        try:
            lm = AutoModelForCausalLM.from_pretrained(
                name_or_path, config=config.backbone_config, dtype=dtype, **load_kwargs
            )
        finally:
            logging.set_verbosity(verbosity)
        model = cls(config, backbone=lm.base_model)
        model._init_from_lm(lm)
        if dtype is not None:
            model.to(lm.dtype)
        model.config.name_or_path = str(name_or_path)
        return model

    def _init_from_lm(self, lm: PreTrainedModel) -> None:
        """Hook for subclasses that take more than the base model from the causal LM."""


class RadVForRewardModeling(RadPreTrainedModel):
    r"""
    RAD-V reward model: a causal backbone and a linear value head with bias, `r_t = W h_t + b` at every position.

    Example:

    ```python
    >>> import torch
    >>> from transformers import GPT2Config
    >>> from rad_q_hf import RadVConfig, RadVForRewardModeling
    >>> config = RadVConfig(backbone_config=GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4))
    >>> model = RadVForRewardModeling(config)
    >>> out = model(torch.tensor([[5, 6, 7]]), labels=torch.tensor([[1.0]]))
    >>> out.rewards.shape  # (B, T, n_labels): the reward of every prefix
    torch.Size([1, 3, 1])

    ```
    """

    config_class = RadVConfig

    def __init__(self, config: RadVConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config, backbone)
        self.value_head = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "value_head", None):
            init.normal_(module.weight, mean=0.0, std=self.config.backbone_config.initializer_range)
            init.zeros_(module.bias)

    def score_hidden(self, hidden: torch.Tensor, label: int | None = None) -> torch.Tensor:
        """Rewards of the prefixes whose last hidden states are `hidden` (..., d): (..., n_labels), or (...) for one
        `label` index."""
        if label is None:
            return self.value_head(hidden)
        return hidden @ self.value_head.weight[label] + self.value_head.bias[label]

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        labels: torch.Tensor | None = None,
        past_key_values=None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> RewardModelOutput | tuple:
        r"""
        attention_mask: (B, past + T), 1 for real tokens; positions are derived from it (padding-aware).
        cache / past_key_values: a `DynamicCache` from an earlier call (both names are accepted).
        labels: (B, n_labels) targets in [0, 1] of each whole text; gives the cumulative length-weighted MSE.
        output_hidden_states, output_attentions, return_dict: as in transformers.

        There is no `**kwargs`: an argument this model does not use raises a `TypeError` instead of being dropped
        (and the Trainer does not mistake the per-batch-mean loss for one normalised by `num_items_in_batch`).
        """
        cache = cache if cache is not None else past_key_values
        out = self._run_backbone(
            input_ids, attention_mask, position_ids, cache, use_cache, output_hidden_states, output_attentions
        )
        rewards = self.score_hidden(out.last_hidden_state)  # (B, T, L)
        loss = None
        if labels is not None:
            self._check_labels(labels, input_ids.shape[0])
            mask = (
                attention_mask[:, -input_ids.shape[1] :] if attention_mask is not None else torch.ones_like(input_ids)
            )
            loss = cumulative_mse_loss(rewards, labels, mask)
        return self._output(out, use_cache, return_dict, loss=loss, rewards=rewards)


__all__ = ["RadPreTrainedModel", "RadVForRewardModeling", "RewardModelOutput", "cumulative_mse_loss"]
