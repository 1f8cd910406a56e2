"""RAD-Q: a reward model with a low-rank head over next tokens (Troshin, Niculae & Fokkens, TMLR 2025).

`r_j(x≤t, v) = e_vᵀ W_j h_t + b_jᵀ h_t`: one forward over the prefix gives `u_j = W_j h_t`, and the reward of any
candidate `v` is a dot product with its (frozen) token embedding `e_v`. Decoding therefore needs one reward-model
call per generated token, whatever the number of candidates. Over prefixes × tokens the reward matrix is
`H Wᵀ Eᵀ + (H b) 1ᵀ`, of rank ≤ d + 1.
"""

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration_rad_q import RadQConfig
from .modeling_rad_v import RadPreTrainedModel, RewardModelOutput, cumulative_mse_loss


class RadQForRewardModeling(RadPreTrainedModel):
    r"""
    RAD-Q reward model: a causal backbone, a head `W: d → n_labels·d` (no bias) and an optional baseline
    `b: d → n_labels`.

    `forward(input_ids, query_ids=...)` returns the rewards of the queried next tokens, `(B, T, n_labels, k)`;
    without `query_ids`, the rewards of every vocabulary token, `(B, T, n_labels, |V|)`. For training on text, put
    BOS first: position `t` then scores the observed token `x_{t+1}` after the prefix `x≤t`.

    Example:

    ```python
    >>> import torch
    >>> from transformers import GPT2Config
    >>> from rad_q_hf import RadQConfig, RadQForRewardModeling
    >>> config = RadQConfig(backbone_config=GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4))
    >>> model = RadQForRewardModeling(config)
    >>> ids = torch.tensor([[0, 5, 6, 7]])
    >>> model(ids, query_ids=torch.tensor([[[1, 2, 3]] * 4])).rewards.shape  # (B, T, n_labels, k)
    torch.Size([1, 4, 1, 3])
    >>> model(ids).rewards.shape  # (B, T, n_labels, |V|)
    torch.Size([1, 4, 1, 99])

    ```
    """

    config_class = RadQConfig

    def __init__(self, config: RadQConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config, backbone)
        d, n = config.hidden_size, config.num_labels
        self.reward_head = nn.Linear(d, n * d, bias=False)  # W_j stacked: u = W h, viewed as (n_labels, d)
        self.baseline_head = nn.Linear(d, n, bias=False) if config.use_baseline else None
        # E is read from the backbone's input embeddings; an untied LM head needs its own copy of the output ones.
        self.output_embeddings = nn.Embedding(config.vocab_size, d) if config.use_output_embeddings else None
        self.post_init()
        self._freeze_embeddings()

    def _freeze_embeddings(self) -> None:
        if self.config.freeze_embeddings:
            self.token_embeddings.requires_grad_(False)
            self.get_input_embeddings().weight.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # Loading materialises fresh parameters (requires_grad=True); freeze E again.
        model = super().from_pretrained(*args, **kwargs)
        model._freeze_embeddings()
        return model

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """As [`PreTrainedModel.resize_token_embeddings`]; an untied `E` (`output_embeddings`) is resized with the
        input embeddings, so every token id keeps a row to be scored with."""
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        if self.output_embeddings is not None and self.output_embeddings.num_embeddings != embeddings.num_embeddings:
            # Not exposed as `get_output_embeddings`: E scores candidates, it is no LM head to tie or generate with.
            resized = self._get_resized_embeddings(
                self.output_embeddings, embeddings.num_embeddings, None, mean_resizing
            )
            resized.requires_grad_(self.output_embeddings.weight.requires_grad)
            self.output_embeddings = resized
        return embeddings

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # W starts at 0, so a fresh RAD-Q model scores like a value model (its baseline bᵀh_t) and the token-specific
        # part grows from there: a random W would start at reward scale ~σ·|e|·|h| (≈ 2.5 on SmolLM2), far from [0, 1].
        if module is getattr(self, "reward_head", None):
            init.zeros_(module.weight)
        if module is getattr(self, "baseline_head", None):
            init.normal_(module.weight, mean=0.0, std=self.config.backbone_config.initializer_range)

    def _init_from_lm(self, lm: PreTrainedModel) -> None:
        if self.output_embeddings is not None:
            self.output_embeddings.weight.data.copy_(lm.get_output_embeddings().weight.data)

    @property
    def token_embeddings(self) -> torch.Tensor:
        """E, the (|V|, d) matrix whose rows `e_v` score the candidates."""
        module = self.output_embeddings if self.output_embeddings is not None else self.get_input_embeddings()
        return module.weight

    def score_hidden(
        self, hidden: torch.Tensor, query_ids: torch.LongTensor | None = None, label: int | None = None
    ) -> torch.Tensor:
        """Rewards of next tokens after prefixes whose last hidden states are `hidden` (..., d).

        query_ids (..., k) picks the tokens (only their k rows of E are read); `None` scores all of V. Returns
        (..., n_labels, k|V), or (..., k|V) for one `label` index (then only W_label is applied). The baseline
        b_jᵀ h_t is shared by every token.
        """
        b = self._baselines(hidden)  # (..., L)
        b = b[..., None] if label is None else b[..., label, None]  # (..., L, 1) or (..., 1)
        return self._token_scores(hidden, query_ids, label) + b

    def _baselines(self, hidden: torch.Tensor) -> torch.Tensor:
        """b_jᵀ h_t, (..., n_labels); zeros without a baseline head."""
        if self.baseline_head is None:
            return hidden.new_zeros(*hidden.shape[:-1], self.config.num_labels)
        return self.baseline_head(hidden)

    def _token_scores(self, hidden, query_ids=None, label=None) -> torch.Tensor:
        """The token-specific part e_vᵀ W_j h_t of `score_hidden`, same shapes."""
        d = hidden.shape[-1]
        if label is None:
            u = self.reward_head(hidden).unflatten(-1, (self.config.num_labels, d))  # (..., L, d) = W_j h_t
        else:
            u = nn.functional.linear(hidden, self.reward_head.weight[label * d : (label + 1) * d])  # (..., d)
        E = self.token_embeddings.to(u.dtype)  # (V, d)
        if query_ids is None:
            return u @ E.T  # (..., [L,] V)
        e = E[query_ids]  # (..., k, d): gather the k rows first, never build the (..., V) product
        if label is None:
            return torch.einsum("...ld,...kd->...lk", u, e)  # (..., L, k)
        return torch.einsum("...d,...kd->...k", u, e)  # (..., k)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        use_cache: bool | None = None,
        query_ids: torch.LongTensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values=None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
    ) -> RewardModelOutput | tuple:
        r"""
        query_ids: (B, T, k) candidate next tokens to score after each prefix. Only their k rows of `E` are
            gathered, so the `(B, T, |V|)` product is never built. Omitted with `labels`: the observed next tokens.
        labels: (B, n_labels) targets of each whole text; `input_ids` must start with BOS. Position `t` scores the
            observed token `x_{t+1}` and the loss is the cumulative length-weighted MSE over those rewards.
        attention_mask, position_ids, cache, use_cache, output_hidden_states, output_attentions, return_dict: as in
            [`RadVForRewardModeling.forward`] (unknown arguments raise a `TypeError`).
        """
        cache = cache if cache is not None else past_key_values
        B, T = self._batch_shape(input_ids)
        if labels is not None and query_ids is not None:
            raise ValueError(
                "Pass `labels` or `query_ids`, not both: with `labels` the observed next tokens are queried."
            )
        if labels is not None:
            # Teacher forcing: the last position has no observed next token; it queries a dummy id, masked below.
            query_ids = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)[..., None]  # (B, T, 1)
        if query_ids is not None and (query_ids.dim() != 3 or query_ids.shape[:2] != (B, T)):
            raise ValueError(
                f"`query_ids` must have shape (batch, seq_len, k) = ({B}, {T}, k), got {tuple(query_ids.shape)}."
            )

        out = self._run_backbone(
            input_ids, attention_mask, position_ids, cache, use_cache, output_hidden_states, output_attentions
        )
        hidden = out.last_hidden_state  # (B, T, d)
        baselines = self._baselines(hidden)  # (B, T, L), computed once for the rewards and the output
        rewards = self._token_scores(hidden, query_ids) + baselines[..., None]  # (B, T, L, k) or (B, T, L, V)

        loss = None
        if labels is not None:
            self._check_labels(labels, B)
            mask = attention_mask[:, -T:] if attention_mask is not None else torch.ones_like(input_ids)
            # Position t scores prefix x≤t+1: it counts when both it and the queried token are real (any padding side).
            loss = cumulative_mse_loss(rewards[:, :-1, :, 0], labels, mask[:, :-1] * mask[:, 1:])
        return self._output(out, use_cache, return_dict, loss=loss, rewards=rewards, baselines=baselines)


__all__ = ["RadQForRewardModeling"]
