"""Decoding with a RAD-Q-on-the-trunk reward model: the LM's own layer-L states, no second trunk, no second prefill.

The scorer installs a forward hook on the LM's layer L for the processor's lifetime. Every LM forward that `generate`
runs (the prefill over the whole prompt, then one new token per row) leaves that layer's output for the new
positions in the hook; the processor call that follows takes it, runs the small top over those positions with the
top's own KV cache (the prompt's attention mask, padding-aware positions, beam reordering as for RAD-Q) and scores
the candidates by gathering their k rows of the LM's `E`.

The hook is removed by `processor.close()` (the `custom_generate` route does it), when the processor is garbage
collected, and re-installed fresh by `reset()`. A step whose LM forward did not run layer L (another LM object than
the reward model's, or no forward at all) or ran it over another number of positions (assisted / speculative
decoding, a chunked prefill) is refused with a clear error instead of scoring a stale state.

Example:

```python
>>> import torch
>>> from transformers import AutoModelForCausalLM, GPT2Config
>>> from rad_q_hf import RadQTrunkForRewardModeling
>>> from rad_q_hf.decoding_trunk import RADQTrunk
>>> lm = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=99, n_embd=32, n_layer=3, n_head=4,
...                                                  bos_token_id=0, eos_token_id=1)).eval()
>>> rm = RadQTrunkForRewardModeling.from_lm(lm, tap_layer=1, num_blocks=1)
>>> prompt = torch.tensor([[5, 6, 7]])
>>> steer = RADQTrunk(rm, beta=10.0, top_k=5, attention_mask=torch.ones_like(prompt))
>>> out = lm.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=4,
...                   min_new_tokens=4, logits_processor=[steer], pad_token_id=1)
>>> out.shape
torch.Size([1, 7])
>>> steer.close()  # removes the hook from the LM

```
"""

import weakref

import torch

from .decoding import RewardAugmentedLogitsProcessor, _eval_mode, _Scorer
from .modeling_rad_q_trunk import layer_output


class _Tap:
    """A forward hook on one LM layer that keeps the layer's output of the LM's latest forward, (N, T_new, d)."""

    def __init__(self, module: torch.nn.Module):
        self.state: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        self.state = layer_output(output).detach()

    def take(self) -> torch.Tensor | None:
        state, self.state = self.state, None  # consumed once: a step without a fresh LM forward is caught
        return state

    def remove(self) -> None:
        self.handle.remove()
        self.state = None


class TrunkScorer(_Scorer):
    """The per-processor state of a trunk reward model: the tap on the LM's layer L and the top's own cache."""

    def __init__(self, term):
        self._tap = None
        super().__init__(term)  # calls reset(), which installs the tap
        self.max_positions = None  # the LM checks its own context; the top has no position table of its own

    def reset(self) -> None:
        """Free the top's cache and re-install a fresh tap (an earlier capture must not leak into the next call)."""
        super().reset()
        self.close()
        self._tap = _Tap(self.model.tap_module)
        self._finalizer = weakref.finalize(self, self._tap.remove)  # a dropped processor leaves no hook behind

    def close(self) -> None:
        """Remove the hook from the LM."""
        if self._tap is not None:
            self._finalizer.detach()
            self._tap.remove()
            self._tap = None

    def _take(self, rows: int, new_positions: int) -> torch.Tensor:
        state = self._tap.take() if self._tap is not None else None
        name = self.model.config.lm_name_or_path or type(self.model.lm).__name__
        if state is None:
            raise RuntimeError(
                f"The LM's layer {self.model.config.tap_layer} did not run before this step: a trunk reward model "
                f"reads the hidden states of its own LM ({name}) while that LM generates. Generate with that very "
                "model object (rm.lm, or rm.attach_lm(lm) with the LM you generate with), or use "
                "lm.generate(custom_generate=rad_q_hf.reward_augmented_generate, reward_model=rm), which attaches it. "
                "Assisted / speculative decoding (whose assistant model also calls the processor) is not supported."
            )
        if tuple(state.shape[:2]) != (rows, new_positions):
            raise ValueError(
                f"The LM's last forward ran layer {self.model.config.tap_layer} over {tuple(state.shape[:2])} "
                f"(rows, positions), but this step needs ({rows}, {new_positions}): assisted / speculative decoding "
                "(and a chunked prefill) is not supported with a trunk reward model, which reads the LM's states "
                "one generated token at a time."
            )
        return state.to(self.model.device, self.model.dtype)

    def prefill(self, ids, mask, cand):
        tapped = self._take(*ids.shape)  # (N, P, d): the whole prompt
        mask = mask.to(self.model.device)
        with _eval_mode(self.model):
            g, self.cache = self.model.run_top(tapped, mask, use_cache=True)  # (N, P, d)
            return self._score(g[:, -1], cand)

    def step(self, new_tok, mask, beam_idx, cand):
        tapped = self._take(new_tok.shape[0], 1)  # (N, 1, d): the newest token of each row
        device = self.model.device
        if beam_idx is not None and self.cache is not None:
            self.cache.reorder_cache(beam_idx.to(device))  # the LM's cache was reordered the same way
        with _eval_mode(self.model):
            g, self.cache = self.model.run_top(tapped, mask.to(device), cache=self.cache, use_cache=True)
            return self._score(g[:, -1], cand)

    def _score(self, g, cand):  # g (N, d) -> (N, k) or (N, V)
        return self.model.score_hidden(g, cand.to(g.device) if cand is not None else None, label=self.label)


class RADQTrunk(RewardAugmentedLogitsProcessor):
    """[`RewardAugmentedLogitsProcessor`] that accepts only RAD-Q-on-the-trunk reward models."""

    expected_model_type = "rad_q_trunk"


__all__ = ["RADQTrunk", "TrunkScorer"]
