"""Configuration of RAD-Q on the LM's own trunk: a small trainable top over the LM's layer-L hidden states."""

from .configuration_rad_v import RadVConfig

TAP_NORMS = ("learned", "lm", "none")


class RadQTrunkConfig(RadVConfig):
    r"""
    Configuration of [`RadQTrunkForRewardModeling`]: RAD-Q's low-rank head `r_j(x≤t, v) = e_vᵀ W_j g_t + b_jᵀ g_t`
    over `g_t = top(norm(h_t^L))`, where `h_t^L` is the *LM's own* hidden state after its layer `tap_layer`. Only the
    norm, the top (0..n transformer blocks of the LM's architecture) and the head are stored and trained; the LM's
    weights and its token embeddings `E` are read from the LM at run time and never saved.

    Args:
        backbone_config (`dict` or `PretrainedConfig`):
            The LM's config (the whole LM, never truncated): the top's blocks are built from it.
        label_names: as in [`RadVConfig`].
        tap_layer (`int`):
            L, the number of the LM's decoder layers whose output is tapped (1 = after the first layer; the LM's
            last layer is allowed, its final norm is not included).
        num_blocks (`int`, defaults to 0):
            Own transformer blocks (the LM's block class, with their own small KV cache at decoding time) between the
            tapped state and the head. 0: the head reads the normalised tapped state directly.
        tap_norm (`str`, defaults to `"learned"`):
            Normalisation of the tapped state before the top: `"learned"` (an own RMSNorm, weight initialised to 1),
            `"lm"` (the LM's own final norm, frozen, not stored) or `"none"`. Mid-layer states of Llama-family LMs have
            a few dimensions with huge activations: a head on raw states trains poorly.
        use_baseline (`bool`, defaults to `True`): add the per-prefix baseline `b_jᵀ g_t`.
        lm_name_or_path (`str`, *optional*): where the LM came from (loaded lazily when no LM is attached).
        lm_fingerprint (`list[float]`, *optional*): a dtype-robust fingerprint of the LM weights the model reads
            (embeddings, layers ≤ L, final norm); attaching another LM is refused.

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from rad_q_hf import RadQTrunkConfig
    >>> lm_config = LlamaConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
    ...                         num_attention_heads=4, num_key_value_heads=2)
    >>> config = RadQTrunkConfig(backbone_config=lm_config, tap_layer=2, num_blocks=1)
    >>> config.tap_layer, config.num_blocks, config.backbone_config.num_hidden_layers  # the LM stays whole
    (2, 1, 4)

    ```
    """

    model_type = "rad_q_trunk"

    def __init__(
        self,
        backbone_config=None,
        label_names=("score",),
        tap_layer: int | None = None,
        num_blocks: int = 0,
        tap_norm: str = "learned",
        use_baseline: bool = True,
        lm_name_or_path: str | None = None,
        lm_fingerprint: list[float] | None = None,
        **kwargs,
    ):
        kwargs.pop("num_layers", None)  # the LM is never truncated: only layers ≤ tap_layer run
        super().__init__(backbone_config=backbone_config, label_names=label_names, num_layers=None, **kwargs)
        if self.backbone_config is not None:
            total = self.backbone_config.num_hidden_layers
            if tap_layer is None or not 1 <= tap_layer <= total:
                raise ValueError(f"`tap_layer` must be between 1 and the LM's {total} layers, got {tap_layer}.")
        if num_blocks < 0:
            raise ValueError(f"`num_blocks` must be ≥ 0, got {num_blocks}.")
        if tap_norm not in TAP_NORMS:
            raise ValueError(f"`tap_norm` must be one of {TAP_NORMS}, got {tap_norm!r}.")
        self.tap_layer = tap_layer
        self.num_blocks = num_blocks
        self.tap_norm = tap_norm
        self.use_baseline = use_baseline
        self.lm_name_or_path = lm_name_or_path
        self.lm_fingerprint = lm_fingerprint


__all__ = ["RadQTrunkConfig"]
