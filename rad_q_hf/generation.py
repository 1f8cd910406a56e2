"""Mask-free reward-augmented decoding: `lm.generate(..., custom_generate=reward_augmented_generate, reward_model=rm)`.

`generate(custom_generate=<callable>)` runs all of `generate`'s input preparation (left padding, the attention mask,
`num_return_sequences` / beam expansion, the cache) and then hands the decoding loop to the callable, with the
prepared `model_kwargs["attention_mask"]` already expanded to one row per sequence. This module builds a fresh RAD
processor from that state, puts it into the prepared processor list and delegates to `generate`'s own loop
(`_sample` or `_beam_search`). The user never passes the mask, so it cannot be missing, stale or of the wrong shape.

What it sets, and why:
- `top_k` / `top_p` / `temperature` keep their `generate` meaning and sources (keywords, a `GenerationConfig`, the
  LM's `generation_config.json`, a pipeline's defaults) but act *before* the reward: the candidate set is the LM's
  top-k (then top-p) and the temperature divides the LM's logits, never β. `generate`'s own top-k / top-p /
  temperature warpers, which would act on `z + β·r`, are removed. An unset `top_k` is RAD's 20, not generate's 50.
- It refuses what RAD cannot do correctly: assisted / prompt-lookup decoding (rolls back speculated tokens),
  contrastive, DoLa, group or constrained beam search, the warpers `min_p`, `typical_p`, `epsilon_cutoff`,
  `eta_cutoff`, `top_h` (they would filter the reward-augmented distribution), `inputs_embeds` without `input_ids`
  and encoder-decoder LMs.

A saved reward-model folder carries `custom_generate/generate.py` (written by `save_pretrained`), so
`lm.generate(**batch, custom_generate="<reward-model folder>", trust_remote_code=True)` steers with that folder's
model. That file imports this package (the processor is not duplicated into every checkpoint); without it
installed it stops with an `ImportError` that says so. The reward model itself loads without the package.

transformers 5.17-5.24 drop `streamer=`, `synced_gpus=` and `tokenizer=` before calling a `custom_generate`
callable. The streamer is read back from the calling `generate` (see `_streamer_of_caller`); `stop_strings` (which
needs `tokenizer=`) and `synced_gpus` (DeepSpeed ZeRO-3 / FSDP) are not available on this route.
"""

import sys
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.generation.configuration_utils import GenerationMode

from .decoding import RewardAugmentedLogitsProcessor, RewardTerm, saved_tokenizer
from .modeling_rad_v import RadPreTrainedModel

# generate's decoding loops that RAD can ride on; everything else is refused.
_LOOPS = {
    GenerationMode.GREEDY_SEARCH: "_sample",
    GenerationMode.SAMPLE: "_sample",
    GenerationMode.BEAM_SEARCH: "_beam_search",
    GenerationMode.BEAM_SAMPLE: "_beam_search",
}
# Warpers generate appends after the user's processors when sampling: (config field, "is it active?").
_HANDLED_WARPERS = {
    "temperature": lambda v: v is not None and v != 1.0,
    "top_k": lambda v: v is not None and v != 0,
    "top_p": lambda v: v is not None and v < 1.0,
}
# generate fills an unset top_k with 50; RAD's own default is the papers' 20.
_GENERATE_DEFAULT_TOP_K, RAD_DEFAULT_TOP_K = 50, 20
_REFUSED_WARPERS = {
    "top_h": lambda v: v is not None,
    "min_p": lambda v: v is not None,
    "typical_p": lambda v: v is not None and v < 1.0,
    "epsilon_cutoff": lambda v: v is not None and 0.0 < v < 1.0,
    "eta_cutoff": lambda v: v is not None and 0.0 < v < 1.0,
}


def reward_augmented_generate(
    model: PreTrainedModel,
    input_ids: torch.LongTensor,
    logits_processor: LogitsProcessorList,
    stopping_criteria: StoppingCriteriaList,
    generation_config: GenerationConfig,
    synced_gpus: bool = False,
    streamer=None,
    reward_model: RadPreTrainedModel | str | list | None = None,
    beta: float = 10.0,
    label: int | str = 0,
    direction: str = "maximize",
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float | None = None,
    lm_tokenizer=None,
    **model_kwargs,
):
    r"""
    Reward-augmented decoding as a `generate(custom_generate=...)` loop: the RAD processor is built from
    `generate`'s own attention mask (left padding, `num_return_sequences` and beams handled), so none is passed.

    Args:
        reward_model: a RAD-V or RAD-Q reward model, a path or Hub id of one, or a list of [`RewardTerm`]s /
            tuples `(reward_model, beta[, label[, direction]])` for a sum of reward terms (then `beta`, `label` and
            `direction` are ignored).
        beta, label, direction: as in [`RewardAugmentedLogitsProcessor`].
        top_k, top_p, temperature: `generate`'s usual settings (keywords, a `GenerationConfig`, the LM's
            `generation_config.json` or a pipeline's defaults), applied to the LM's logits *before* the reward is
            added: the candidates are the top-k, then the top-p within them, and the temperature never divides β.
            An unset `top_k` is RAD's 20 (not generate's 50); `top_k=0` scores the whole vocabulary (RAD-Q, with
            `top_p`). The papers sample at temperature 1: pass `temperature=1.0` if the LM's defaults say otherwise.
        lm_tokenizer: the LM's tokenizer; needed only when the LM's and a reward model's embedding matrices have
            different sizes (Pythia-style padding) and the LM's folder holds no tokenizer. (`generate` drops its own
            `tokenizer=` before calling a custom loop.)

    The other arguments are `generate`'s; do not call this function directly.

    Example:

    ```python
    >>> import torch
    >>> from transformers import AutoModelForCausalLM, GPT2Config
    >>> import rad_q_hf
    >>> backbone = GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=1)
    >>> lm = AutoModelForCausalLM.from_config(backbone)
    >>> rm = rad_q_hf.RadQForRewardModeling(rad_q_hf.RadQConfig(backbone_config=backbone))
    >>> ids = torch.tensor([[2, 2, 5, 6], [7, 8, 9, 10]])  # left-padded batch (pad id 2)
    >>> mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    >>> out = lm.generate(ids, attention_mask=mask, custom_generate=rad_q_hf.reward_augmented_generate,
    ...                   reward_model=rm, beta=10.0, top_k=5, do_sample=True, max_new_tokens=3,
    ...                   min_new_tokens=3, num_return_sequences=2, pad_token_id=2)
    >>> out.shape  # 2 prompts × 2 samples, 4 prompt + 3 new tokens
    torch.Size([4, 7])

    ```
    """
    loop = _check_supported(model, input_ids, generation_config, logits_processor)
    if reward_model is None:
        raise ValueError("Pass `reward_model=` (a RAD-V/RAD-Q model, its path, or a list of reward terms).")
    terms = _terms(reward_model, beta, label, direction, model.device)
    for term in terms:  # a trunk reward model reads this LM's own hidden states (its weights are checked)
        if hasattr(term.reward_model, "attach_lm"):
            term.reward_model.attach_lm(model)
    mask = model_kwargs.get("attention_mask")
    if mask is None:  # transformers ≥ 5.24 drops an all-ones mask: no padding
        mask = torch.ones_like(input_ids)
    top_k, top_p, temperature = _sampling_settings(generation_config, top_k, top_p, temperature)
    rad = RewardAugmentedLogitsProcessor.combine(
        terms,
        top_k=top_k,
        top_p=top_p,
        attention_mask=mask,
        tokenizer=lm_tokenizer if lm_tokenizer is not None else _lm_tokenizer(model, terms),
    )
    rad.pad_token_ids = _pad_token_ids(rad.pad_token_ids, generation_config)
    rad.mask_from_generate = True
    processors = _insert(rad, logits_processor, generation_config, temperature)
    streamer = streamer if streamer is not None else _streamer_of_caller()
    try:
        return getattr(type(model), loop)(
            model,
            input_ids,
            logits_processor=processors,
            stopping_criteria=stopping_criteria,
            generation_config=generation_config,
            synced_gpus=synced_gpus,
            streamer=streamer,
            **model_kwargs,
        )
    finally:
        rad.close()  # free the reward models' caches (and any hook on the LM) now, not when it is collected


def _check_supported(model, input_ids, generation_config, logits_processor) -> str:
    """The name of generate's loop to delegate to; a clear error for what RAD cannot do correctly."""
    if any(isinstance(p, RewardAugmentedLogitsProcessor) for p in logits_processor):
        raise ValueError("A RAD processor is already in `logits_processor`: use it or custom_generate, not both.")
    if model.config.is_encoder_decoder:
        raise ValueError("Reward-augmented generation supports decoder-only LMs only.")
    if input_ids.shape[1] == 0:
        raise ValueError("RAD scores the prompt's tokens: pass `input_ids`, not only `inputs_embeds`.")
    mode = generation_config.get_generation_mode()
    if mode not in _LOOPS:
        raise ValueError(
            f"Reward-augmented generation cannot run {mode.value.replace('_', ' ')}: it supports greedy, sampling "
            "and beam search (assisted / prompt-lookup decoding would roll back tokens the reward model has cached)."
        )
    refused = [name for name, active in _REFUSED_WARPERS.items() if active(getattr(generation_config, name, None))]
    if refused and generation_config.do_sample:
        raise ValueError(
            f"Reward-augmented generation does not support {refused}: they would filter the reward-augmented "
            "distribution. RAD filters with its own `top_k` / `top_p` before adding the reward."
        )
    return _LOOPS[mode]


def _streamer_of_caller():
    """The `streamer=` given to the `generate` that called this loop: transformers drops it before the call (it
    already fed it the prompt), so without this the streamer would see the prompt and never the new tokens."""
    frame = sys._getframe(2)  # _streamer_of_caller ← reward_augmented_generate ← GenerationMixin.generate
    if frame.f_code.co_name == "generate" and "custom_generate" in frame.f_locals:
        return frame.f_locals.get("streamer")
    return None


def _sampling_settings(generation_config, top_k, top_p, temperature):
    """RAD's (top_k or None, top_p or None, temperature): the keywords, else generate's resolved settings."""
    if top_k is None:
        top_k = generation_config.top_k
        top_k = RAD_DEFAULT_TOP_K if top_k in (None, _GENERATE_DEFAULT_TOP_K) else top_k
    top_p = top_p if top_p is not None else generation_config.top_p
    temperature = temperature if temperature is not None else generation_config.temperature
    return top_k or None, top_p if top_p is not None and top_p < 1.0 else None, temperature or 1.0


def _terms(reward_model, beta, label, direction, device) -> list[RewardTerm]:
    if isinstance(reward_model, (list, tuple)):
        terms = [t if isinstance(t, RewardTerm) else RewardTerm(*t) for t in reward_model]
    else:
        terms = [RewardTerm(reward_model, beta, label, direction)]
    for term in terms:
        if isinstance(term.reward_model, (str, Path)):
            term.reward_model = load_reward_model(term.reward_model, device)
    return terms


def load_reward_model(
    name_or_path: str | Path, device: torch.device | str | None = None, **hub_kwargs
) -> RadPreTrainedModel:
    """A RAD-V / RAD-Q reward model from a folder or Hub id (the registered Auto class), in eval mode on `device`.

    Example:

    ```python
    >>> import os, tempfile
    >>> from transformers import GPT2Config
    >>> from rad_q_hf import RadVConfig, RadVForRewardModeling
    >>> from rad_q_hf.generation import load_reward_model
    >>> folder = tempfile.mkdtemp()
    >>> backbone = GPT2Config(vocab_size=99, n_embd=32, n_layer=1, n_head=4)
    >>> RadVForRewardModeling(RadVConfig(backbone_config=backbone)).save_pretrained(folder)
    >>> type(load_reward_model(folder)).__name__
    'RadVForRewardModeling'
    >>> os.path.isfile(os.path.join(folder, "custom_generate", "generate.py"))  # save_pretrained wrote it
    True

    ```
    """
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(name_or_path), **hub_kwargs)  # revision=, token=, ...
    if not isinstance(model, RadPreTrainedModel):
        raise TypeError(f"{name_or_path} holds a {type(model).__name__}, not a RAD-V or RAD-Q reward model.")
    return model.to(device).eval()


def _lm_tokenizer(model, terms):
    """The LM's saved tokenizer, when the processor needs it to tell a shared vocabulary from another one.

    Two cases: the LM and a reward model have vocabularies of different sizes (Pythia-style embedding matrices are
    padded to different sizes), or a reward model saved a tokenizer of its own, which may map the same number of
    tokens to other ids (a Llama-2 reward model steering Mistral: 32,000 each) and must be compared, not assumed.
    Without either, no tokenizer is loaded (the fast path stays as it was).
    """
    sizes_differ = any(t.reward_model.config.vocab_size != model.config.vocab_size for t in terms)
    if not sizes_differ and all(saved_tokenizer(_path(t.reward_model)) is None for t in terms):
        return None
    return saved_tokenizer(_path(model))


def _path(model) -> str:
    return getattr(model, "name_or_path", "") or ""


def _pad_token_ids(known: torch.Tensor | None, generation_config) -> torch.Tensor | None:
    """The processor's pad ids plus the ones generate uses (its pad id fills finished rows, EOS when it has none)."""
    ids = set(known.tolist()) if known is not None else set()
    for x in (generation_config.pad_token_id, generation_config.eos_token_id):
        ids.update(x if isinstance(x, (list, tuple)) else [] if x is None else [x])
    return torch.tensor(sorted(ids)) if ids else None


def _insert(rad, processors, generation_config, temperature) -> LogitsProcessorList:
    """`processors` with RAD after the user's and built-in processors, before generate's remaining warpers.

    generate builds the list as [built-ins..., user processors..., warpers...] with the warpers fixed by the
    generation config, so the tail is known exactly: the temperature / top-k / top-p warpers there are dropped
    (RAD filters and the temperature moves before it); watermarking and renormalisation stay after RAD.
    """
    processors = list(processors)
    tail = _generated_tail(processors, generation_config)
    head = processors[: len(processors) - len(tail)]
    handled = (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
    before = [TemperatureLogitsWarper(temperature)] if generation_config.do_sample and temperature != 1.0 else []
    return LogitsProcessorList(head + before + [rad] + [p for p in tail if not isinstance(p, handled)])


def _generated_tail(processors, generation_config) -> list:
    """The processors generate appended after the user's: the sampling warpers, then watermarking/renormalising."""
    n = 0
    if generation_config.do_sample:
        n += sum(active(getattr(generation_config, name, None)) for name, active in _HANDLED_WARPERS.items())
    n += generation_config.watermarking_config is not None
    n += generation_config.renormalize_logits is True
    tail = processors[len(processors) - n :] if n else []
    if n > len(processors):
        raise RuntimeError("Unexpected logits-processor layout from generate: use logits_processor=[RADQ(...)].")
    return tail


__all__ = ["load_reward_model", "reward_augmented_generate"]
