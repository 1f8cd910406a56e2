"""RAD-Q on the LM's own trunk: the LM's layer-L hidden states, a small trainable top and RAD-Q's low-rank head.

A separate RAD-Q reward model runs a second transformer whose lower layers compute much what the LM's do. This kind
reuses the LM's own hidden state `h_t` after its layer `L` instead (captured while the LM runs, which `generate` does
anyway), normalises it, passes it through 0..n own blocks (the LM's block class) and scores any next token `v` with
`r_j(x≤t, v) = e_vᵀ W_j g_t + b_jᵀ g_t` over the LM's own token embeddings `E`. The checkpoint holds only the norm,
the blocks and the head: never the LM's weights or `E`. It names the LM and carries a fingerprint of the weights it
reads, so attaching another LM is refused.

Only the LM's layers ≤ L run here: a forward hook on layer L captures its output and stops the LM's forward (an
exception caught below), which works for any architecture that keeps its decoder layers in one `nn.ModuleList`
(GPT-2, Llama, Mistral, Qwen, Gemma, ...). Imports only torch, transformers and siblings (Hub remote code).
"""

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers import initialization as init

from .compat import cache_kwarg, output_cache
from .configuration_rad_q_trunk import RadQTrunkConfig
from .modeling_rad_v import RadPreTrainedModel, RewardModelOutput, cumulative_mse_loss

_FINAL_NORM_NAMES = ("norm", "ln_f", "final_layernorm", "norm_f", "final_layer_norm")
_FINGERPRINT_SAMPLE = 4096  # elements read per parameter tensor: cheap even for a 7B LM
_FINGERPRINT_RTOL = 0.02  # bf16 / fp16 copies of the same weights move the statistics by ~0.2 %


@dataclass
class TrunkRewardOutput(RewardModelOutput):
    """
    [`RewardModelOutput`] plus `reward_mask` `(B, T)`: which positions of `rewards` are real prefix rewards. Without
    `query_ids`, position `t` holds the reward of the prefix `x≤t`, read as the reward of token `x_t` after the
    LM's state at `t − 1`; a row's first real token has no state before it (the LM sees no BOS that the prompts at
    decoding time would not have), so its position is masked. `hidden_states` are the top's outputs `g_t`.
    """

    reward_mask: torch.Tensor | None = None


class _TapReached(Exception):
    """Raised by the tap hook to stop the LM's forward right after layer L (nothing above it runs)."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__("tap layer reached")
        self.hidden = hidden


def layer_output(output) -> torch.Tensor:
    """The hidden states in a decoder layer's output (a tensor in transformers 5, a tuple in some models)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a causal LM or base model: the `nn.ModuleList` with `num_hidden_layers` entries."""
    base = getattr(model, "base_model", model)
    n = model.config.num_hidden_layers
    for module in base.children():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise TypeError(
        f"Cannot find the {n} decoder layers of {type(model).__name__}: RAD-Q on the trunk needs an LM that keeps "
        "its decoder layers in one nn.ModuleList on its base model (GPT-2, Llama, Mistral, Qwen, ...)."
    )


def final_norm(model: nn.Module) -> nn.Module | None:
    """The base model's final norm (`norm`, `ln_f`, ...), or None."""
    base = getattr(model, "base_model", model)
    for name in _FINAL_NORM_NAMES:
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def lm_token_embeddings(lm: nn.Module) -> torch.Tensor:
    """E (|V|, d): the LM's output embeddings (its LM head; the input embeddings when tied)."""
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    return (head if head is not None else lm.get_input_embeddings()).weight


@torch.no_grad()
def lm_fingerprint(lm: nn.Module, tap_layer: int) -> list[float]:
    """Two numbers per weight group the trunk model reads (E, each layer ≤ L, the final norm): the RMS of a fixed
    strided sample of its values and their projection on a fixed random direction (divided by √n).

    Robust to the LM's dtype (an fp16 / bf16 copy of the same weights agrees within ~0.2 %), different for another
    LM or a fine-tune that moved the weights by more than about 2 %.
    """
    groups = [[lm_token_embeddings(lm)], list(lm.get_input_embeddings().parameters())]
    groups += [list(layer.parameters()) for layer in decoder_layers(lm)[:tap_layer]]
    norm = final_norm(lm)
    groups += [list(norm.parameters())] if norm is not None else []
    out = []
    for params in groups:
        sample = [
            p.detach().flatten()[:: max(1, p.numel() // _FINGERPRINT_SAMPLE)][:_FINGERPRINT_SAMPLE] for p in params
        ]
        x = torch.cat([s.float().cpu() for s in sample]) if sample else torch.zeros(1)
        direction = torch.randn(len(x), generator=torch.Generator().manual_seed(len(x)))
        rms, proj = x.pow(2).mean().sqrt(), (x * direction).sum() / math.sqrt(len(x))
        out += [float(f"{float(rms):.6g}"), float(f"{float(proj):.6g}")]
    return out


def fingerprints_match(a: list[float], b: list[float]) -> bool:
    """Whether two `lm_fingerprint`s describe the same weights (up to a change of dtype)."""
    if len(a) != len(b):
        return False
    for i in range(0, len(a), 2):  # (rms, projection) pairs; both compared on the group's RMS scale
        scale = max(abs(a[i]), abs(b[i]), 1e-12)
        if abs(a[i] - b[i]) > _FINGERPRINT_RTOL * scale or abs(a[i + 1] - b[i + 1]) > _FINGERPRINT_RTOL * scale:
            return False
    return True


class TrunkRMSNorm(nn.Module):
    """RMSNorm with a learned scale (initialised to 1) for the tapped state."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


@contextmanager
def _eval(module: nn.Module):
    """Run `module` with dropout off, then give every submodule back its own mode."""
    if not module.training:
        yield
        return
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def top_config(config: RadQTrunkConfig):
    """The config of the top: the LM's architecture with `num_blocks` layers and a 1-token (unused) vocabulary."""
    top = copy.deepcopy(config.backbone_config)
    L, n = config.tap_layer, config.num_blocks
    layer_types = getattr(top, "layer_types", None)
    if isinstance(layer_types, (list, tuple)):  # the blocks continue the LM's layers L.. (sliding-window patterns)
        top.layer_types = [layer_types[min(L + i, len(layer_types) - 1)] for i in range(n)]
    top.num_hidden_layers = n
    top.vocab_size = 1  # fed `inputs_embeds` only: a full embedding table would be |V|·d dead weights
    top.pad_token_id = None
    return top


class RadQTrunkForRewardModeling(RadPreTrainedModel):
    r"""
    RAD-Q over the LM's own layer-L hidden states: `r_j(x≤t, v) = e_vᵀ W_j g_t + b_jᵀ g_t` with
    `g_t = top(norm(h_t^L))`. Built with [`~RadQTrunkForRewardModeling.from_lm`]; a loaded checkpoint needs its LM
    (`from_pretrained(path, lm=lm)`, `attach_lm(lm)`, or it loads `config.lm_name_or_path` on first use).

    `forward(input_ids, attention_mask, labels=...)` runs the LM only up to layer L (frozen, no gradients), then the top
    and the head, and returns the prefix rewards `(B, T, n_labels)` (position `t`: the reward of `x_t` after `x<t`)
    with the cumulative MSE over real prefixes; with `query_ids` (B, T, k) the rewards of those next tokens after
    each prefix, `(B, T, n_labels, k)`.

    Example:

    ```python
    >>> import torch
    >>> from transformers import AutoModelForCausalLM, LlamaConfig
    >>> from rad_q_hf import RadQTrunkForRewardModeling
    >>> lm = AutoModelForCausalLM.from_config(LlamaConfig(
    ...     vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
    ...     num_key_value_heads=2, bos_token_id=0, eos_token_id=1))
    >>> rm = RadQTrunkForRewardModeling.from_lm(lm, tap_layer=2, num_blocks=1, labels=["toxicity"])
    >>> out = rm(torch.tensor([[5, 6, 7, 8]]), labels=torch.tensor([[1.0]]))
    >>> out.rewards.shape, out.reward_mask.tolist()  # (B, T, n_labels); the first token has no prefix state
    (torch.Size([1, 4, 1]), [[0, 1, 1, 1]])
    >>> sum(p.numel() for p in rm.parameters()) < sum(p.numel() for p in lm.parameters())  # never the LM's weights
    True

    ```
    """

    config_class = RadQTrunkConfig
    base_model_prefix = "top"
    _no_split_modules = []

    def __init__(self, config: RadQTrunkConfig, lm: PreTrainedModel | None = None):
        PreTrainedModel.__init__(self, config)  # no backbone of its own: the LM is borrowed, never a submodule
        if config.backbone_config is None or config.tap_layer is None:
            raise ValueError("RadQTrunkForRewardModeling needs the LM's config and a `tap_layer`: use from_lm(...).")
        d, n = config.hidden_size, config.num_labels
        eps = getattr(config.backbone_config, "rms_norm_eps", None) or 1e-6
        self.tap_norm = TrunkRMSNorm(d, eps) if config.tap_norm == "learned" else None
        self.top = AutoModel.from_config(top_config(config)) if config.num_blocks else None
        self.reward_head = nn.Linear(d, n * d, bias=False)  # W_j stacked: u = W g, viewed as (n_labels, d)
        self.baseline_head = nn.Linear(d, n, bias=False) if config.use_baseline else None
        self.post_init()
        object.__setattr__(self, "_lm", None)  # not a submodule: not saved, not moved, not trained
        if lm is not None:
            self.attach_lm(lm)

    # ----------------------------------------------------------------------------------------------------------------
    # the borrowed LM
    @classmethod
    def from_lm(
        cls,
        lm_or_path: PreTrainedModel | str,
        tap_layer: int,
        num_blocks: int = 0,
        labels: list[str] | tuple[str, ...] = ("score",),
        **config_kwargs,
    ) -> "RadQTrunkForRewardModeling":
        """A fresh trunk reward model for a causal LM (a model or its path): the top's blocks start as copies of the
        LM's layers `L+1 .. L+n` (and its final norm), continuing the LM's own computation; the head starts at
        `W = 0` like RAD-Q's."""
        lm = lm_or_path
        if not isinstance(lm, PreTrainedModel):
            lm = AutoModelForCausalLM.from_pretrained(str(lm_or_path))
        config = RadQTrunkConfig(
            backbone_config=copy.deepcopy(lm.config),
            label_names=labels,
            tap_layer=tap_layer,
            num_blocks=num_blocks,
            lm_name_or_path=str(getattr(lm, "name_or_path", "") or "") or None,
            lm_fingerprint=lm_fingerprint(lm, tap_layer),
            **config_kwargs,
        )
        model = cls(config)
        model._init_top_from_lm(lm)
        model.attach_lm(lm)
        return model.to(lm.device)

    @classmethod
    def from_pretrained(cls, *args, lm: PreTrainedModel | None = None, **kwargs):
        """`from_pretrained(path, lm=lm)` attaches the LM (checked against the fingerprint); without `lm=` the LM
        named in the config is loaded on first use."""
        model = super().from_pretrained(*args, **kwargs)
        if lm is not None:
            model.attach_lm(lm)
        return model

    def attach_lm(self, lm: PreTrainedModel) -> "RadQTrunkForRewardModeling":
        """Use `lm` as the trunk; refuses an LM whose shape or weights differ from the one this model was trained on."""
        if lm is self._lm:
            return self
        bc = self.config.backbone_config
        shape = (lm.config.num_hidden_layers, lm.config.hidden_size, lm_token_embeddings(lm).shape[0])
        if shape != (bc.num_hidden_layers, bc.hidden_size, bc.vocab_size):
            raise ValueError(
                f"This reward model was built on {self.config.lm_name_or_path!r} ({bc.num_hidden_layers} layers, "
                f"d={bc.hidden_size}, |V|={bc.vocab_size}); the given LM has {shape[0]} layers, d={shape[1]}, "
                f"|V|={shape[2]}. A trunk reward model only works with its own LM."
            )
        expected = self.config.lm_fingerprint
        if expected is not None and not fingerprints_match(expected, lm_fingerprint(lm, self.config.tap_layer)):
            raise ValueError(
                f"The given LM's weights are not those of {self.config.lm_name_or_path!r}, the LM this reward model "
                "was trained on (its layers up to the tap layer or its embeddings differ): a trunk reward model "
                "reads that LM's own hidden states and only works with it."
            )
        object.__setattr__(self, "_lm", lm)
        return self

    @property
    def lm(self) -> PreTrainedModel:
        """The attached LM (loaded from `config.lm_name_or_path` on first use when none was attached)."""
        if self._lm is None:
            path = self.config.lm_name_or_path
            if not path:
                raise ValueError("No LM attached to this trunk reward model: call attach_lm(lm) first.")
            self.attach_lm(AutoModelForCausalLM.from_pretrained(path).to(self.device).eval())
        return self._lm

    def _init_top_from_lm(self, lm: PreTrainedModel) -> None:
        if self.top is None:
            return
        lm_layers, top_layers, L = decoder_layers(lm), decoder_layers(self.top), self.config.tap_layer
        for i, layer in enumerate(top_layers):
            if L + i < len(lm_layers):  # blocks past the LM's last layer keep their fresh initialisation
                layer.load_state_dict(lm_layers[L + i].state_dict())
        if final_norm(lm) is not None and final_norm(self.top) is not None:
            final_norm(self.top).load_state_dict(final_norm(lm).state_dict())
        with torch.no_grad():  # absolute position tables (GPT-2's wpe): the tapped state already holds positions
            for module in self.top.modules():
                if isinstance(module, nn.Embedding):
                    module.weight.zero_()

    def get_input_embeddings(self) -> nn.Module:
        return self.lm.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        raise NotImplementedError("The token embeddings belong to the LM.")

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "reward_head", None):
            init.zeros_(module.weight)  # as RAD-Q: a fresh model scores like a value model bᵀg_t
        if module is getattr(self, "baseline_head", None):
            init.normal_(module.weight, mean=0.0, std=self.config.backbone_config.initializer_range)
        if isinstance(module, TrunkRMSNorm):
            init.ones_(module.weight)

    @property
    def token_embeddings(self) -> torch.Tensor:
        """E (|V|, d), read from the LM (never stored here)."""
        return lm_token_embeddings(self.lm)

    @property
    def tap_module(self) -> nn.Module:
        """The LM's decoder layer whose output is tapped (layer `tap_layer`, counted from 1)."""
        return decoder_layers(self.lm)[self.config.tap_layer - 1]

    # ----------------------------------------------------------------------------------------------------------------
    # the pieces: the LM up to L, the norm and top, the head
    @torch.no_grad()
    def tap(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The LM's hidden states after layer L, (B, T, d); the layers above L never run."""
        lm = self.lm
        position_ids = None
        if attention_mask is not None:  # padding-aware positions, as generate computes them
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

        def stop(module, args, output):
            raise _TapReached(layer_output(output))

        handle = self.tap_module.register_forward_hook(stop)
        try:
            with _eval(lm):
                lm.base_model(
                    input_ids=input_ids.to(lm.device),
                    attention_mask=attention_mask.to(lm.device) if attention_mask is not None else None,
                    position_ids=position_ids.to(lm.device) if position_ids is not None else None,
                    use_cache=False,
                )
        except _TapReached as reached:
            return reached.hidden.detach().to(self.device, self.dtype)
        finally:
            handle.remove()
        raise RuntimeError(f"The LM's layer {self.config.tap_layer} did not run during its forward.")

    def normalize(self, hidden: torch.Tensor) -> torch.Tensor:
        """The tapped state `h^L` (..., d) normalised as the config says."""
        if self.config.tap_norm == "learned":
            return self.tap_norm(hidden)
        if self.config.tap_norm == "lm":
            norm = final_norm(self.lm)
            return norm(hidden.to(norm.weight.dtype)).to(hidden.dtype)
        return hidden

    def run_top(self, tapped, attention_mask=None, position_ids=None, cache=None, use_cache=None):
        """Norm then the own blocks over tapped states `(B, T, d)` (new positions only when `cache` holds earlier
        ones; `attention_mask` covers past + new). Returns `g` (B, T, d) and the top's cache (None without blocks)."""
        x = self.normalize(tapped)
        if self.top is None:
            return x, None
        if position_ids is None and attention_mask is not None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -x.shape[1] :]
        kwargs = {cache_kwarg(self.top): cache} if cache is not None else {}
        out = self.top(
            inputs_embeds=x,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return out.last_hidden_state, (output_cache(out) if use_cache else None)

    def score_hidden(
        self, hidden: torch.Tensor, query_ids: torch.LongTensor | None = None, label: int | None = None
    ) -> torch.Tensor:
        """Rewards of next tokens after prefixes whose top outputs are `hidden` (..., d), as in RAD-Q:
        (..., n_labels, k|V), or (..., k|V) for one `label`; only the queried k rows of E are gathered.

        The head's three methods mirror `RadQForRewardModeling`'s (one model, one file: this file must load as
        remote code on its own); they differ in that E is the LM's, detached and moved to the top's device.
        """
        b = self._baselines(hidden)  # (..., L)
        b = b[..., None] if label is None else b[..., label, None]
        return self._token_scores(hidden, query_ids, label) + b

    def _baselines(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.baseline_head is None:
            return hidden.new_zeros(*hidden.shape[:-1], self.config.num_labels)
        return self.baseline_head(hidden)

    def _token_scores(self, hidden, query_ids=None, label=None) -> torch.Tensor:
        d = hidden.shape[-1]
        if label is None:
            u = self.reward_head(hidden).unflatten(-1, (self.config.num_labels, d))  # (..., L, d) = W_j g_t
        else:
            u = nn.functional.linear(hidden, self.reward_head.weight[label * d : (label + 1) * d])  # (..., d)
        E = self.token_embeddings.detach()  # (V, d), the LM's, frozen
        if query_ids is None:
            return u @ E.to(u.device, u.dtype).T  # (..., [L,] V)
        e = E[query_ids.to(E.device)].to(u.device, u.dtype)  # (..., k, d): gather the k rows first
        if label is None:
            return torch.einsum("...ld,...kd->...lk", u, e)  # (..., L, k)
        return torch.einsum("...d,...kd->...k", u, e)  # (..., k)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        query_ids: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> TrunkRewardOutput:
        r"""
        input_ids, attention_mask: texts as the LM would see them (no BOS added), any padding side.
        query_ids: (B, T, k) next tokens to score after each prefix `x≤t`: rewards `(B, T, n_labels, k)`.
        labels: (B, n_labels) targets of each whole text: the cumulative length-weighted MSE over the prefix
            rewards of `reward_mask` (responses only, as RAD-V / RAD-Q).
        """
        B, T = self._batch_shape(input_ids)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        mask = mask.to(self.device)
        g, _ = self.run_top(self.tap(input_ids, mask), mask)  # (B, T, d)
        baselines = self._baselines(g)  # (B, T, L)
        if query_ids is not None:
            if query_ids.dim() != 3 or query_ids.shape[:2] != (B, T):
                raise ValueError(f"`query_ids` must have shape ({B}, {T}, k), got {tuple(query_ids.shape)}.")
            rewards = self._token_scores(g, query_ids) + baselines[..., None]  # (B, T, L, k)
            reward_mask = mask
        else:
            # Teacher forcing: the reward of prefix x≤t is that of the observed token x_t after the state at t − 1.
            observed = input_ids[:, 1:, None].to(self.device)  # (B, T − 1, 1)
            r = self._token_scores(g[:, :-1], observed)[..., 0] + baselines[:, :-1]  # (B, T − 1, L)
            rewards = torch.cat([r.new_zeros(B, 1, r.shape[-1]), r], 1)  # (B, T, L); position 0 has no state
            reward_mask = torch.cat([mask[:, :1] * 0, mask[:, 1:] * mask[:, :-1]], 1)  # (B, T)
        loss = None
        if labels is not None:
            if query_ids is not None:
                raise ValueError("Pass `labels` or `query_ids`, not both: with `labels` the observed tokens count.")
            self._check_labels(labels, B)
            loss = cumulative_mse_loss(rewards, labels.to(self.device), reward_mask)
        return TrunkRewardOutput(
            loss=loss, rewards=rewards, hidden_states=g, baselines=baselines, reward_mask=reward_mask
        )


__all__ = ["RadQTrunkForRewardModeling", "TrunkRewardOutput"]
