"""Configuration of RAD-V, the unidirectional value-head reward model of Deng & Raffel (EMNLP 2023).

The config wraps the config of any decoder-only backbone (GPT-2, Llama/SmolLM2, ...). It imports only transformers,
so it also works as Hub remote code.
"""

from transformers import AutoConfig, PretrainedConfig


class RadVConfig(PretrainedConfig):
    r"""
    Configuration of [`RadVForRewardModeling`]: a causal backbone plus a linear value head that predicts one reward
    per label at every prefix.

    Args:
        backbone_config (`dict` or `PretrainedConfig`):
            Config of the decoder-only backbone. A dict must carry its `model_type`.
        label_names (`list[str]`, defaults to `["score"]`):
            One name per reward output, e.g. the 7 Jigsaw attributes. Decoding uses one of them (index 0 by default).
        num_layers (`int`, *optional*):
            Keep only the backbone's first `num_layers` blocks (a cheaper reward body). `None` keeps all of them.

    Example:

    ```python
    >>> from transformers import GPT2Config
    >>> from rad_q_hf import RadVConfig
    >>> config = RadVConfig(backbone_config=GPT2Config(n_layer=4), label_names=["toxicity"], num_layers=2)
    >>> config.backbone_config.num_hidden_layers, config.num_labels
    (2, 1)

    ```
    """

    model_type = "rad_v"
    # The backbone is a sub-config, so `from_pretrained(..., attn_implementation=..., dtype=...)` and
    # `config._attn_implementation = ...` reach it (transformers sets them on every sub-config). A plain dict on
    # purpose: 5.24's `sub_configs_defaults` would also *build* the backbone, which our `__init__` does itself.
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(
        self,
        backbone_config: dict | PretrainedConfig | None = None,
        label_names: list[str] | tuple[str, ...] = ("score",),
        num_layers: int | None = None,
        **kwargs,
    ):
        if isinstance(backbone_config, dict):
            backbone_config = dict(backbone_config)
            if "model_type" not in backbone_config:
                raise ValueError("`backbone_config` given as a dict must contain its `model_type` (e.g. 'gpt2').")
            backbone_config = AutoConfig.for_model(**backbone_config)
        label_names = list(label_names)
        if not label_names or len(set(label_names)) != len(label_names):
            raise ValueError(f"`label_names` must be a non-empty list of distinct names, got {label_names}.")
        if num_layers is not None and backbone_config is not None:
            total = backbone_config.num_hidden_layers
            if not 1 <= num_layers <= total:
                raise ValueError(
                    f"`num_layers` must be between 1 and the backbone's {total} layers, got {num_layers}."
                )
            _truncate_layers(backbone_config, num_layers)
        self.backbone_config = backbone_config
        self.label_names = label_names
        self.num_layers = num_layers
        # Token ids come from the backbone, so generation helpers and the RAD-Q BOS prefix see the real ones.
        for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if kwargs.get(key) is None and backbone_config is not None:
                kwargs[key] = getattr(backbone_config, key, None)
        kwargs["id2label"] = dict(enumerate(label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(label_names)}
        kwargs.pop("num_labels", None)
        super().__init__(**kwargs)

    # Both live in the backbone config only (one source of truth, saved once); the setters write through because
    # transformers sets them on the top-level config, e.g. `resize_token_embeddings` sets `config.vocab_size`.
    @property
    def hidden_size(self) -> int:
        return self.backbone_config.hidden_size

    @hidden_size.setter
    def hidden_size(self, value: int) -> None:
        self.backbone_config.hidden_size = value

    @property
    def vocab_size(self) -> int:
        return self.backbone_config.vocab_size

    @vocab_size.setter
    def vocab_size(self, value: int) -> None:
        self.backbone_config.vocab_size = value

    def label_index(self, label: int | str) -> int:
        """Index of a reward output, given its index or its name."""
        if isinstance(label, str):
            if label not in self.label_names:
                raise ValueError(f"Unknown label {label!r}; this reward model has labels {self.label_names}.")
            return self.label_names.index(label)
        if not -len(self.label_names) <= label < len(self.label_names):
            raise ValueError(f"Label index {label} out of range for labels {self.label_names}.")
        return label % len(self.label_names)


def _truncate_layers(config: PretrainedConfig, num_layers: int) -> None:
    """Shrink a backbone config to its first `num_layers` blocks, including per-layer lists such as `layer_types`."""
    config.num_hidden_layers = num_layers
    for key in ("layer_types",):
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and len(value) > num_layers:
            setattr(config, key, list(value)[:num_layers])


__all__ = ["RadVConfig"]
