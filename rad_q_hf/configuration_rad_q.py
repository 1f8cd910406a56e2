"""Configuration of RAD-Q, the low-rank reward model of Troshin, Niculae & Fokkens (TMLR 2025)."""

from .configuration_rad_v import RadVConfig


class RadQConfig(RadVConfig):
    r"""
    Configuration of [`RadQForRewardModeling`]: a causal backbone plus the low-rank head
    `r_j(prefix_t, v) = e_vᵀ W_j h_t (+ b_jᵀ h_t)`, which scores every next token `v` from one forward pass.

    Args:
        backbone_config, label_names, num_layers: as in [`RadVConfig`].
        use_baseline (`bool`, defaults to `True`):
            Add the per-prefix baseline `b_jᵀ h_t`, shared by all tokens. The reward matrix then has rank ≤ d + 1
            (≤ d without it).
        freeze_embeddings (`bool`, defaults to `True`):
            Keep the token embeddings `E` (and the backbone's input embeddings, when tied) frozen during training.
        use_output_embeddings (`bool`, *optional*):
            Read `E` from a separate copy of the backbone's output embeddings instead of its input embeddings. `None`
            picks it automatically: only for backbones whose LM head is not tied to the input embeddings.

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from rad_q_hf import RadQConfig
    >>> backbone = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    >>> RadQConfig(backbone_config=backbone).use_output_embeddings
    False

    ```
    """

    model_type = "rad_q"

    def __init__(
        self,
        backbone_config=None,
        label_names=("score",),
        num_layers=None,
        use_baseline: bool = True,
        freeze_embeddings: bool = True,
        use_output_embeddings: bool | None = None,
        **kwargs,
    ):
        super().__init__(backbone_config=backbone_config, label_names=label_names, num_layers=num_layers, **kwargs)
        if use_output_embeddings is None and self.backbone_config is not None:
            use_output_embeddings = not getattr(self.backbone_config, "tie_word_embeddings", True)
        self.use_baseline = use_baseline
        self.freeze_embeddings = freeze_embeddings
        self.use_output_embeddings = use_output_embeddings


__all__ = ["RadQConfig"]
