"""Reward-augmented decoding as a `LogitsProcessor`: `model.generate(..., logits_processor=[RADQ(rm, ...)])`.

At every step the LM's top-k candidates `v` get `z_v + β·clamp(r_v, 0, 1)` (or `β·(1 − clamp(r_v, 0, 1))` with
`direction="minimize"`) and every other token `−inf`. The reward model keeps its own KV cache across steps:

- RAD-Q: one cached forward per step on the newest token (BOS is prepended once at the prefill, as in training);
  the k candidates are scored by gathering their k rows of `E` against `W h_t`.
- RAD-V: one forward per step over the B·k candidate rows, on the prefix cache expanded k-fold; the chosen
  candidate's cache row is then kept (no second forward for the chosen token).

`generate` hands a processor only `input_ids` and `scores` (no mask, no cache, no beam indices), so the processor
tracks the rows it saw: a row set that grew by one column continues the cache; rows that beam search reordered are
matched to their previous rows and the cache is reordered; anything else (a new `generate` call, a different row
count) rebuilds the cache from the full `input_ids`. The prompt's `attention_mask` must be given for left-padded
batches: a batch whose rows start with the pad token and no mask is refused, and so are right padding, a mask of
another shape and one that marks real tokens as padding. Temperature, applied by `generate` after this processor, also divides β: use
`temperature=1` as the papers do. `generate(custom_generate=rad_q_hf.reward_augmented_generate, ...)` avoids all of
this: it hands the processor `generate`'s own mask and puts the temperature before the reward.

The reward models are scored in eval mode (dropout off) and left in the mode they were in. Call `reset()` to free
the reward models' caches after a `generate` call (the custom-generate route does it itself).
"""

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from transformers import LogitsProcessor

from .modeling_rad_v import RadPreTrainedModel


@dataclass
class RewardTerm:
    """One reward-model term `β · r_label` (or `β · (1 − r_label)` with `direction="minimize"`).

    `tokenizer` is the reward model's own tokenizer (default: the one saved with it, if any); when it differs from the
    LM's tokenizer given to the processor, the term is scored through text (`decoding_cross.py`).
    """

    reward_model: RadPreTrainedModel
    beta: float = 10.0
    label: int | str = 0
    direction: str = "maximize"
    tokenizer: object = None


class RewardAugmentedLogitsProcessor(LogitsProcessor):
    r"""
    Reward-augmented decoding with a RAD-V or RAD-Q reward model (or a sum of several, see [`combine`]).

    Args:
        reward_model: a [`RadVForRewardModeling`] or [`RadQForRewardModeling`] sharing the LM's vocabulary.
        beta: reward strength β.
        top_k: number of LM candidates scored per step (RAD-V needs it; RAD-Q may set it to `None` with `top_p`).
        top_p: nucleus filter on the LM's distribution before the reward is added (RAD-Q over the whole vocabulary;
            with `top_k` as well, applied within the top-k).
        label: index or name of the reward output to use.
        direction: `"maximize"` (e.g. positive sentiment) or `"minimize"` (uses `1 − r`: detoxification).
        attention_mask: the prompt's attention mask exactly as given to `generate` (needed for left padding;
            `generate(custom_generate=rad_q_hf.reward_augmented_generate, ...)` passes generate's own instead).
        tokenizer: the LM's tokenizer, checked against the reward model's vocabulary (and its saved tokenizer,
            when the reward model folder has one); it also allows embedding matrices padded to other sizes. When
            that saved tokenizer has another vocabulary, the reward model is scored through text instead
            (`decoding_cross.py`, docs/cross_tokenizer.md; needs `top_k`).

    Example:

    ```python
    >>> import torch
    >>> from transformers import AutoModelForCausalLM, GPT2Config
    >>> from rad_q_hf import RADQ, RadQConfig, RadQForRewardModeling
    >>> backbone = GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=1)
    >>> lm = AutoModelForCausalLM.from_config(backbone)
    >>> rm = RadQForRewardModeling(RadQConfig(backbone_config=backbone))
    >>> prompt = torch.tensor([[5, 6, 7]])
    >>> out = lm.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, max_new_tokens=4,
    ...                   min_new_tokens=4, logits_processor=[RADQ(rm, beta=10.0, top_k=5)], pad_token_id=1)
    >>> out.shape  # the prompt + 4 new tokens (min_new_tokens: the random LM may not stop early at EOS)
    torch.Size([1, 7])

    ```
    """

    expected_model_type: str | None = None  # set by RADQ / RADV
    supports_continuous_batching = False

    def __init__(
        self,
        reward_model: RadPreTrainedModel,
        beta: float = 10.0,
        top_k: int | None = 20,
        top_p: float | None = None,
        label: int | str = 0,
        direction: str = "maximize",
        attention_mask: torch.Tensor | None = None,
        tokenizer=None,
    ):
        self._setup([RewardTerm(reward_model, beta, label, direction)], top_k, top_p, attention_mask, tokenizer)

    @classmethod
    def combine(
        cls,
        terms: list[RewardTerm | tuple],
        top_k: int | None = 20,
        top_p: float | None = None,
        attention_mask: torch.Tensor | None = None,
        tokenizer=None,
    ) -> "RewardAugmentedLogitsProcessor":
        """Several reward terms over one candidate set: `z_v + Σ_i β_i · r_i(v)`.

        `terms` holds [`RewardTerm`]s or tuples `(reward_model, beta[, label[, direction]])`, e.g.
        `combine([(detox_rm, 10.0, 0, "minimize"), (sentiment_rm, 5.0)])`.
        """
        self = cls.__new__(cls)
        self._setup(
            [t if isinstance(t, RewardTerm) else RewardTerm(*t) for t in terms],
            top_k,
            top_p,
            attention_mask,
            tokenizer,
        )
        return self

    # ----------------------------------------------------------------------------------------------------------------
    # construction-time checks
    def _setup(self, terms, top_k, top_p, attention_mask, tokenizer) -> None:
        if not terms:
            raise ValueError("At least one reward term is needed.")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"`top_k` must be an integer ≥ 1 (or None with `top_p`), got {top_k!r}.")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"`top_p` must be in (0, 1], got {top_p!r}.")
        if top_k is None and top_p is None:
            raise ValueError("Give `top_k`, `top_p` or both: RAD adds rewards to a filtered candidate set.")
        # ---- cross-tokenizer dispatch (issue 14): terms whose reward model reads another tokenizer go through text
        bridges = _cross_tokenizer_bridges(tokenizer, terms)  # {term index: TokenizerBridge}
        if bridges and top_k is None:
            raise ValueError("A reward model with another tokenizer scores the LM's top-k candidates: set `top_k`.")
        shared = [t for i, t in enumerate(terms) if i not in bridges]  # the terms read on the LM's own ids
        # ----
        vocab_sizes = {t.reward_model.config.vocab_size for t in shared}
        if len(vocab_sizes) > 1 and tokenizer is None:
            raise ValueError(
                f"The reward models have different vocabulary sizes {sorted(vocab_sizes)}: pass `tokenizer=` (the "
                "LM's) so the shared token → id map can be checked (embedding matrices padded to different sizes)."
            )
        self.scorers = [_make_scorer(t, self.expected_model_type, bridges.get(i)) for i, t in enumerate(terms)]
        # Reward models are trained on text without special tokens (RAD-Q puts its own BOS first): a BOS that the LM's
        # tokenizer put before each prompt (Llama, Mistral, ...) is hidden from the ones that read the LM's ids, or
        # RAD-Q would read BOS twice and RAD-V a token it never saw. (Text-reading terms skip special tokens anyway;
        # a trunk model reads the LM's own states, BOS included, as the LM computed them.)
        reads_ids = [s for s in self.scorers if isinstance(s, (_RadQScorer, _RadVScorer))]
        bos_ids = {s.model.config.bos_token_id for s in reads_ids} - {None}
        self._hidden_bos = bos_ids.pop() if len(reads_ids) == len(self.scorers) and len(bos_ids) == 1 else None
        if top_k is None and any(isinstance(s, _RadVScorer) for s in self.scorers):
            raise ValueError("RAD-V scores a fixed number of candidates per step: set `top_k` (e.g. 20).")
        # Ids ≥ the smallest reward-model vocabulary are never real tokens once the tokenizer is checked.
        self.vocab_size = min(vocab_sizes) if vocab_sizes else None  # None: every term goes through text
        self.top_k = min(top_k, self.vocab_size or top_k) if top_k is not None else None  # top_k=10**6 means "all"
        self.top_p = top_p
        self.num_tokens = None  # the LM tokenizer's size, when known: LM scores may be wider (padding rows)
        if tokenizer is not None:
            _check_tokenizer(tokenizer, shared)
            self.num_tokens = len(tokenizer)
        self.pad_token_ids = _pad_token_ids(tokenizer, shared)
        # What a padding position of a prompt mask holds: the LM tokenizer's pad id when known (the reward models'
        # configs may name another one), else one id shared by all of them (checked on the mask itself).
        self._mask_pad_id = getattr(tokenizer, "pad_token_id", None)
        self.mask_from_generate = False  # set by reward_augmented_generate: generate's own mask cannot be stale
        self.reset(attention_mask)

    def reset(self, attention_mask: torch.Tensor | None = None) -> None:
        """Forget the cached state (frees the reward models' caches); give the next prompt's `attention_mask`."""
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError(f"`attention_mask` must be (num_prompts, prompt_len), got {tuple(attention_mask.shape)}.")
        self.prompt_mask = attention_mask
        self._ids = None  # (N, P) rows seen at the last call
        self._mask = None  # (N, P) their attention mask
        self._cand = None  # (N, k) their candidates (RAD-V: which cache row holds the chosen token)
        for scorer in self.scorers:
            scorer.reset()

    def close(self) -> None:
        """Free the caches and remove any hook a scorer put on the LM (trunk reward models); reset() re-arms."""
        self.reset()
        for scorer in self.scorers:
            getattr(scorer, "close", lambda: None)()

    # ----------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        z = self._shared_vocabulary(scores)  # (N, V') the columns that are real tokens for every model
        N, P = input_ids.shape
        beam_idx, continues, reencode = self._match_previous_rows(input_ids)
        if continues:
            mask = torch.cat(
                [self._mask[beam_idx] if beam_idx is not None else self._mask, self._mask.new_ones(N, 1)], 1
            )
        else:
            mask = self._initial_mask(input_ids)
            if self._hidden_bos is not None:
                first_real = mask.bool() & (mask.cumsum(1) == 1)  # (N, P) each row's first real token
                mask = mask.masked_fill(first_real & (input_ids == self._hidden_bos), 0)
            if self.pad_token_ids is not None:  # copied now, beside the prefill's syncs: not a 2nd sync in a step
                self._pad_ids_on(input_ids.device)

        # Candidate set: top-k (then top-p inside it), or top-p over the whole vocabulary (RAD-Q only).
        if self.top_k is not None:
            cand_scores, cand = z.topk(min(self.top_k, z.shape[-1]), dim=-1)  # (N, k), sorted
        else:
            cand_scores, cand = z, None  # (N, V')
        keep = _top_p_keep(cand_scores, self.top_p, sorted_=cand is not None) if self.top_p is not None else None

        bonus = torch.zeros_like(cand_scores, dtype=torch.float32)
        for scorer in self.scorers:
            if not continues:
                r = scorer.prefill(input_ids, mask, cand)
            elif reencode is not None and isinstance(scorer, _RadVScorer):
                r = scorer.step(input_ids[:, -1:], mask, beam_idx, cand, reencode=(input_ids, reencode))
            else:
                r = scorer.step(input_ids[:, -1:], mask, beam_idx, cand)
            bonus += scorer.weight(r).to(bonus.device)  # the reward model may sit on another device
        if not continues and not torch.isfinite(bonus).all():  # at the prefill, beside its syncs: not every step
            raise ValueError(
                "The reward model returned non-finite rewards (NaN or inf) for these prompts; sampling would fail and "
                "greedy or beam search would silently pick those candidates. An fp16 reward model overflowing is the "
                "usual cause: load it in bfloat16 or float32."
            )
        new = cand_scores.float() + bonus
        if keep is not None:
            new = new.masked_fill(~keep, -math.inf)
        self._ids, self._mask, self._cand = input_ids, mask, cand
        if cand is None and z is scores:  # the usual full-width case: no copy
            return new.to(scores.dtype)
        out = torch.full_like(scores, -math.inf)
        if cand is None:
            out[:, : new.shape[-1]] = new.to(scores.dtype)
            return out
        return out.scatter(-1, cand, new.to(scores.dtype))

    def _shared_vocabulary(self, scores):
        """The LM scores restricted to ids every model knows: `scores` itself when the widths match (the usual case).

        Embedding matrices are often padded past the tokenizer (Pythia: 50,277 tokens, 50,304 or 50,432 rows). With
        the tokenizer checked against the reward models, the extra LM columns are never real tokens: they get −inf.
        """
        V = scores.shape[-1]
        if V == self.vocab_size or self.vocab_size is None:  # None: all terms read text (issue 14), any width
            return scores
        if self.num_tokens is None or self.num_tokens > min(V, self.vocab_size):
            raise ValueError(
                f"The LM scores {V} tokens but the reward model's vocabulary has {self.vocab_size}: RAD needs the LM "
                "and the reward model to share one tokenizer (same token → id map). If they do and only the "
                "embedding matrices are padded to different sizes, pass the LM's `tokenizer=` to the processor "
                "(reward_augmented_generate: `lm_tokenizer=`, or save the tokenizer in the LM's folder)."
            )
        return scores[:, : self.vocab_size]

    def _match_previous_rows(self, input_ids):
        """Whether these rows extend the previous call's rows by one token, how beam search reordered them, and
        whether RAD-V must re-encode because a sampled token was none of its row's candidates.

        Returns (beam_idx or None, continues, rows to re-encode or None). One host sync per step, only to pick
        the path; the rare re-encode adds one more.
        """
        prev = self._ids
        if prev is None or prev.shape[0] != input_ids.shape[0] or prev.shape[1] + 1 != input_ids.shape[1]:
            return None, False, None
        head = input_ids[:, :-1]
        match = (head[:, None, :] == prev[None, :, :]).all(-1)  # (N_new, N_old)
        beam_idx = match.int().argmax(-1)  # (N,) previous row of each new row, when beam search reordered them
        off_same = self._off_candidates(input_ids[:, -1], None)
        off_beam = self._off_candidates(input_ids[:, -1], beam_idx)
        # Every answer in one transfer: the only host sync per step (beam reorder and RAD-V's check included).
        flags = [(head == prev).all(), match.any(-1).all()]
        if off_same is not None:
            flags += [off_same.any(), off_beam.any()]
        same, known, *any_off = torch.stack(flags).tolist()
        if same:
            return None, True, off_same.nonzero().squeeze(1) if any_off and any_off[0] else None
        if not known:
            return None, False, None  # not a reorder of the rows we know (e.g. a new generate call): rebuild
        return beam_idx, True, off_beam.nonzero().squeeze(1) if any_off and any_off[1] else None

    def _off_candidates(self, new_tok, beam_idx):
        """(N,) rows whose new token is none of their candidates (a processor after RAD forced it) and not padding of
        a finished row; None without RAD-V (RAD-Q feeds the actual token, any token)."""
        if self._cand is None or not any(isinstance(s, _RadVScorer) for s in self.scorers):
            return None
        cand = self._cand if beam_idx is None else self._cand[beam_idx]  # (N, k)
        off = (cand != new_tok[:, None]).all(-1)
        if self.pad_token_ids is not None:
            off &= (new_tok[:, None] != self._pad_ids_on(new_tok.device)).all(-1)  # broadcast: no host sync
        return off

    def _pad_ids_on(self, device):
        """`pad_token_ids` on `device`, copied once (no host → device copy per step)."""
        if self.pad_token_ids.device != device:
            self.pad_token_ids = self.pad_token_ids.to(device)
        return self.pad_token_ids

    def _initial_mask(self, input_ids):
        N, P = input_ids.shape
        if self.prompt_mask is None:
            self._check_unpadded(input_ids)
            return torch.ones_like(input_ids)
        m = self.prompt_mask.to(input_ids.device).long()
        if N % m.shape[0] or m.shape[1] != P:
            raise ValueError(
                f"The processor's attention_mask {tuple(m.shape)} does not fit these prompts ({N} rows × {P} tokens). "
                "Pass the mask of the prompts given to `generate` (processor.reset(attention_mask=...) before reuse), "
                "or let generate pass it: generate(..., custom_generate=rad_q_hf.reward_augmented_generate)."
            )
        # generate repeats each prompt num_return_sequences (or num_beams) times, interleaved.
        m = m.repeat_interleave(N // m.shape[0], dim=0)
        if not bool(m[:, -1].all()):  # new tokens would follow pads: the reward would read a pad's state
            raise ValueError(
                "The prompts are right-padded: RAD (like generate) needs left padding, tokenizer(..., padding_side="
                "'left') or AutoTokenizer.from_pretrained(..., padding_side='left')."
            )
        if self.mask_from_generate:
            return m
        masked = input_ids[m == 0]
        # Padding holds the pad id (or, with none known, one and the same id): anything else is another batch.
        stale = masked != (self._mask_pad_id if self._mask_pad_id is not None else masked[:1])
        # An all-ones mask has no pad position to check: kept from an unpadded batch, it would score a padded one's
        # pads as text.
        if bool(stale.any()) or (masked.numel() == 0 and self._left_padded(input_ids)):
            raise ValueError(
                "attention_mask is not the mask of these prompts (it marks real tokens as padding, or marks as text "
                "the pads some rows start with). Call processor.reset(attention_mask=...) with the new prompts' mask "
                "before reusing it, or let generate pass it: generate(..., "
                "custom_generate=rad_q_hf.reward_augmented_generate)."
            )
        return m

    def _check_unpadded(self, input_ids):
        """Without a mask every token counts as text: refuse a left-padded batch (rows start with different numbers
        of pad tokens; a BOS that equals the pad id starts every row once and is not padding)."""
        if self._left_padded(input_ids):
            raise ValueError(
                "These prompts are left-padded (some rows start with pad tokens) but the processor has no "
                "attention_mask, so the pads would be scored as text. Use generate(..., custom_generate="
                "rad_q_hf.reward_augmented_generate, reward_model=...), which takes generate's own mask, or pass "
                "attention_mask=batch['attention_mask'] to the processor."
            )

    def _left_padded(self, input_ids) -> bool:
        """Whether rows start with different numbers of known pad tokens (a BOS equal to the pad id starts every row
        once and is not padding)."""
        if self.pad_token_ids is None or input_ids.shape[0] < 2:
            return False
        is_pad = torch.isin(input_ids, self._pad_ids_on(input_ids.device)).long()
        leading = is_pad.cumprod(-1).sum(-1)  # (N,) pad tokens at the start of each row
        return bool(leading.min() != leading.max())


class RADQ(RewardAugmentedLogitsProcessor):
    """[`RewardAugmentedLogitsProcessor`] that accepts only RAD-Q reward models (one reward-model call per token)."""

    expected_model_type = "rad_q"


class RADV(RewardAugmentedLogitsProcessor):
    """[`RewardAugmentedLogitsProcessor`] that accepts only RAD-V reward models (k reward-model rows per step)."""

    expected_model_type = "rad_v"


# --------------------------------------------------------------------------------------------------------------------
# per-reward-model state
class _Scorer:
    def __init__(self, term: RewardTerm):
        self.model = term.reward_model  # scored in eval mode (see `_eval_mode`), its own mode left alone
        config = self.model.config
        self.label = config.label_index(term.label)
        if term.direction not in ("maximize", "minimize"):
            raise ValueError(f"`direction` must be 'maximize' or 'minimize', got {term.direction!r}.")
        if not math.isfinite(float(term.beta)):
            raise ValueError(f"`beta` must be a finite number, got {term.beta!r}.")
        self.beta, self.minimize = float(term.beta), term.direction == "minimize"
        bc = config.backbone_config
        self.max_positions = getattr(bc, "max_position_embeddings", None) or getattr(bc, "n_positions", None)
        self.reset()

    def reset(self):
        self.cache = None

    def weight(self, r: torch.Tensor) -> torch.Tensor:
        r = r.float().clamp(0.0, 1.0)
        return self.beta * (1.0 - r if self.minimize else r)

    def _check_length(self, n_tokens: int) -> None:
        if self.max_positions is not None and n_tokens > self.max_positions:
            raise ValueError(
                f"The reward model would read {n_tokens} tokens, beyond its context of {self.max_positions}. "
                "Shorten the prompts (tokenizer(..., truncation=True, max_length=...)) or max_new_tokens."
            )


class _RadQScorer(_Scorer):
    """One cached forward per step over the newest token; BOS + prompt at the prefill."""

    def prefill(self, ids, mask, cand):
        self._check_length(ids.shape[1] + 1)
        device = self.model.device
        bos = torch.full_like(ids[:, :1], self.model.config.bos_token_id)
        ids = torch.cat([bos, ids], 1).to(device)
        mask = torch.cat([torch.ones_like(bos), mask], 1).to(device)  # BOS counts as real
        with _eval_mode(self.model):
            hidden, self.cache = self.model.encode(ids, mask, use_cache=True)  # (N, 1+P, d)
            return self._score(hidden[:, -1], cand)

    def step(self, new_tok, mask, beam_idx, cand):
        self._check_length(mask.shape[1] + 1)
        device = self.model.device
        if beam_idx is not None:
            self.cache.reorder_cache(beam_idx.to(device))
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask], 1).to(device)
        with _eval_mode(self.model):
            hidden, self.cache = self.model.encode(new_tok.to(device), mask, cache=self.cache, use_cache=True)
            return self._score(hidden[:, -1], cand)

    def _score(self, h, cand):  # h (N, d) -> (N, k) or (N, V)
        q = cand.to(h.device) if cand is not None else None
        return self.model.score_hidden(h, q, label=self.label)


class _RadVScorer(_Scorer):
    """The prefix cache is held k-fold; each step scores all N·k candidate rows in one forward."""

    def reset(self):
        super().reset()
        self.cand = None  # (N, k) candidates of the previous step: find which one was chosen

    def prefill(self, ids, mask, cand):
        self._check_length(ids.shape[1] + 1)
        self._check_fits(cand.shape[0] * cand.shape[1], ids.shape[1] + 1)
        device = self.model.device
        self.cache = None  # free the old cache before the new one is built
        with _eval_mode(self.model):
            _, self.cache = self.model.encode(ids.to(device), mask.to(device), use_cache=True)
        self.cache.batch_repeat_interleave(cand.shape[1])  # (N·k) rows, each holding the prefix
        return self._score_candidates(mask, cand)

    def step(self, new_tok, mask, beam_idx, cand, reencode=None):
        self._check_length(mask.shape[1] + 1)
        device = self.model.device
        k_prev = self.cand.shape[1]
        src = beam_idx.to(device) if beam_idx is not None else torch.arange(len(new_tok), device=device)  # (N,)
        # The cache rows already hold prefix ⊕ candidate: keep the chosen candidate's row of each source row. A
        # finished row's padding is none of its candidates: it keeps candidate 0 (generate discards its scores).
        chosen = (self.cand[src] == new_tok.to(device)).int().argmax(-1)  # (N,)
        self.cache.batch_select_indices((src * k_prev + chosen).repeat_interleave(cand.shape[1]))  # one gather
        if reencode is not None:
            self._reencode(*reencode, mask, cand.shape[1])
        return self._score_candidates(mask, cand)

    def _reencode(self, ids, rows, mask, k):
        """Running rows whose token none of their candidates held (a processor after RAD forced it): encode them
        from scratch and put them in place of their k cache rows, instead of continuing from candidate 0's row."""
        device = self.model.device
        rows = rows.to(device)  # (R,)
        with _eval_mode(self.model):
            _, fresh = self.model.encode(ids[rows].to(device), mask[rows].to(device), use_cache=True)  # R rows, P
        dest = (rows[:, None] * k + torch.arange(k, device=device)).flatten()  # (R·k,) their cache rows
        for layer, new in zip(self.cache.layers, fresh.layers, strict=True):
            layer.keys.index_copy_(0, dest, new.keys.repeat_interleave(k, dim=0))  # (R·k, H, P, D)
            layer.values.index_copy_(0, dest, new.values.repeat_interleave(k, dim=0))

    def _score_candidates(self, mask, cand):
        device = self.model.device
        N, k = cand.shape
        self.cand = cand.to(device)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1).to(device).repeat_interleave(k, dim=0)  # (N·k, P+1)
        with _eval_mode(self.model):
            hidden, self.cache = self.model.encode(self.cand.reshape(N * k, 1), mask, cache=self.cache, use_cache=True)
            return self.model.score_hidden(hidden[:, -1], label=self.label).view(N, k)

    def _check_fits(self, rows: int, n_tokens: int) -> None:
        """Refuse, before the first forward, a cache of `rows` × `n_tokens` that cannot fit in free memory."""
        bc = self.model.config.backbone_config
        heads = getattr(bc, "num_attention_heads", 1)
        head_dim = getattr(bc, "head_dim", None) or bc.hidden_size // heads
        kv_heads = getattr(bc, "num_key_value_heads", None) or heads
        per_token = 2 * bc.num_hidden_layers * kv_heads * head_dim * self.model.dtype.itemsize  # keys + values
        need = 3 * rows * n_tokens * per_token  # ×3: each step's row gather and token append copy the cache
        free = _free_memory(self.model.device)
        if free is not None and need > free:
            raise ValueError(
                f"RAD-V would hold {rows} cache rows (prompts × samples × top_k) of {n_tokens} tokens, about "
                f"{need / 2**30:.1f} GiB, but only {free / 2**30:.1f} GiB are free on {self.model.device}: lower "
                "`top_k`, the batch size or num_return_sequences (or use RAD-Q, whose cost does not grow with k)."
            )


def _make_scorer(term: RewardTerm, expected_model_type: str | None, bridge=None) -> _Scorer:
    model_type = getattr(term.reward_model.config, "model_type", None)
    if expected_model_type is not None and model_type != expected_model_type:
        names = {"rad_q": "RADQ", "rad_v": "RADV", "rad_q_trunk": "RADQTrunk"}
        raise TypeError(
            f"{names[expected_model_type]} needs a {expected_model_type} reward model, got {model_type!r}"
            + (f": use {names[model_type]}(...) instead." if model_type in names else ".")
        )
    if bridge is not None and model_type in ("rad_q", "rad_v"):  # issue 14: scored through text
        from .decoding_cross import make_cross_scorer

        return make_cross_scorer(term, bridge, model_type)
    if model_type == "rad_q":
        if term.reward_model.config.bos_token_id is None:
            raise ValueError("RAD-Q prepends BOS to the prompt: set `bos_token_id` in the reward model's config.")
        return _RadQScorer(term)
    if model_type == "rad_v":
        return _RadVScorer(term)
    if model_type == "rad_q_trunk":  # the LM's own hidden states: its scorer lives in a sibling module
        from .decoding_trunk import TrunkScorer

        return TrunkScorer(term)
    raise TypeError(f"Expected a RAD-V or RAD-Q reward model, got {type(term.reward_model).__name__}.")


@contextmanager
def _eval_mode(model: torch.nn.Module):
    """Score with dropout off (rewards must not depend on the RNG), then give every module back its own mode."""
    if not model.training:  # the usual case: nothing to switch
        yield
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on `device`, or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu" and os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    return None


def _pad_token_ids(tokenizer, terms) -> torch.Tensor | None:
    """Ids that can be padding: the LM tokenizer's pad, the reward models' pad and EOS (GPT-2 pads with EOS)."""
    ids = [getattr(tokenizer, "pad_token_id", None)]
    for term in terms:
        ids += [term.reward_model.config.pad_token_id, term.reward_model.config.eos_token_id]
    flat = {i for x in ids if x is not None for i in (x if isinstance(x, (list, tuple)) else [x])}
    return torch.tensor(sorted(flat)) if flat else None


def _top_p_keep(scores: torch.Tensor, top_p: float, sorted_: bool) -> torch.Tensor:
    """Nucleus mask: keep the most likely tokens until their probability mass reaches `top_p` (at least one)."""
    probs = scores.float().softmax(-1)
    if sorted_:  # top-k output is already sorted in decreasing order
        return (probs.cumsum(-1) - probs) < top_p
    sorted_probs, order = probs.sort(-1, descending=True)
    keep_sorted = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def saved_tokenizer(path: str):
    """The tokenizer saved at `path` (a folder, or a Hub id in the local cache), or None; loaded once per path and
    state of its files, so that building a processor per `generate` call does not re-read it each time."""
    if not path:
        return None
    folder = Path(path)
    files = [n for n in _TOKENIZER_FILES if (folder / n).is_file()]
    if folder.is_dir() and not files:  # AutoTokenizer would build an empty tokenizer from a config alone
        return None
    return _load_tokenizer(path, tuple((n, (folder / n).stat().st_mtime_ns) for n in files))


@lru_cache(maxsize=16)
def _load_tokenizer(path: str, files: tuple):
    from transformers import AutoTokenizer  # local: only needed for the tokenizer checks

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError):
        return None


def _saved_tokenizer(config):
    """The tokenizer saved with a reward model (its `name_or_path` folder), or None."""
    return saved_tokenizer(getattr(config, "name_or_path", "") or "")


def _cross_tokenizer_bridges(tokenizer, terms) -> dict:
    """Issue 14: a `TokenizerBridge` for each term whose reward model's tokenizer (`RewardTerm.tokenizer`, else its
    saved one) has another vocabulary than the LM's `tokenizer`; none without the LM tokenizer."""
    if tokenizer is None:
        return {}
    from .tokenizer_bridge import TokenizerBridge

    bridges = {}
    for i, term in enumerate(terms):
        rm_tokenizer = term.tokenizer if term.tokenizer is not None else _saved_tokenizer(term.reward_model.config)
        if rm_tokenizer is None or rm_tokenizer.get_vocab() == tokenizer.get_vocab():
            continue
        try:
            bridges[i] = TokenizerBridge(tokenizer, rm_tokenizer)
        except ValueError as err:
            raise ValueError(
                f"The LM tokenizer and the reward model's tokenizer map tokens to different ids, and scoring through "
                f"text is not possible: {err}"
            ) from err
    return bridges


def _check_tokenizer(tokenizer, terms) -> None:
    """The LM tokenizer must fit every reward model's vocabulary, with the same token → id map where known."""
    for term in terms:
        config = term.reward_model.config
        if len(tokenizer) > config.vocab_size:
            raise ValueError(
                f"The LM tokenizer has {len(tokenizer)} tokens but the reward model only {config.vocab_size}: "
                "they do not share a vocabulary."
            )
        rm_tokenizer = _saved_tokenizer(config)  # None: no tokenizer of its own, nothing more to compare
        if rm_tokenizer is not None and rm_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(
                f"The LM tokenizer and the reward model's tokenizer ({config.name_or_path}) map tokens to different "
                "ids: RAD needs one shared vocabulary."
            )


__all__ = ["RADQ", "RADV", "RewardAugmentedLogitsProcessor", "RewardTerm"]
