"""Reward terms whose reward model reads another tokenizer than the LM (issue 14): RAD-V and RAD-Q through text.

The processor in `decoding.py` builds these scorers when it is given the LM's `tokenizer` and a reward model whose
tokenizer (`RewardTerm.tokenizer`, else the one saved with the reward model) has another vocabulary. They keep the
processor's scorer interface (`prefill` / `step` on LM ids and LM candidates) and a [`TokenizerBridge`] state that
turns LM tokens into reward-model (RM) tokens: each candidate becomes "drop the RM prefix's last `rollback` tokens,
append `pieces`" (usually one token; sometimes several or none).

Rolled-back tokens are never cut out of the KV cache: their columns are masked out of the RM attention mask (per row),
so the cache of every row stays one tensor and positions are `cumsum(mask) − 1` over the real tokens, exactly as if
the row had been encoded from scratch.

**RAD-V.** The reward of a candidate is the RM's value of `RM ids of (text ⊕ candidate)`. Each step, one forward over
the N·k cache rows (one per candidate) feeds every candidate's first piece; the few candidates with more pieces feed
the rest on a gathered copy of their rows, so the big forward stays one token wide however long the longest candidate
is. After the LM samples, the chosen candidate's row is kept (as in the shared-tokenizer path) and, where it does not
hold the bridge's RM prefix yet (the chosen candidate's later pieces, a re-sync, a token outside the candidates), the
difference is fed in one forward over the N kept rows. A candidate adding no RM token gets the reward of the current
text.

**RAD-Q.** Defined as the RAD-Q reward of the candidate's **first own** RM token: usually the first piece, scored
after the RM prefix the candidate keeps: `r(x, v) = r_RADQ(RM prefix without its last rollback tokens, first piece)`.
When the leading pieces only re-tokenize the dropped prefix text (exactly its bytes: a prefix ending in `ĊĊ` that
"The" turns into `Ċ Ċ The`), they are skipped: the next piece is scored after the whole current prefix, which reads the
same text (otherwise every word after a paragraph break would be scored as `Ċ` alike). A multi-token candidate is thus
judged by how it starts (its later tokens would each need the hidden state of the one before: another RM call). A candidate
that adds no RM token (half a UTF-8 character, a special token) leaves the text unchanged, and gets the reward of
the current text: the RAD-Q reward of the RM prefix's last token given the tokens before it (for an empty text, the
head's baseline at BOS). One cached RM forward per generated token feeds the RM tokens the chosen token added (none,
one or several, masked into a common width); the hidden states of the last `window` RM positions are kept to score
candidates that roll back.
"""

import copy

import torch

from .decoding import RewardTerm, _eval_mode, _Scorer
from .tokenizer_bridge import BridgeState, CandidatePieces, TokenizerBridge, common_prefix_len, pad_right


def drop_last_real(mask: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Zero the last `n` (R,) real positions of each row of `mask` (R, L).

    >>> drop_last_real(torch.tensor([[0, 1, 1, 0, 1]]), torch.tensor([2])).tolist()
    [[0, 1, 0, 0, 0]]
    """
    from_right = mask.flip(-1).cumsum(-1).flip(-1)  # (R, L): real positions at or after each column
    return mask * (from_right > n[:, None].to(mask.device)).to(mask.dtype)


def _last_real(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real column (R,); rows without one give −1."""
    idx = torch.arange(mask.shape[-1], device=mask.device)
    return torch.where(mask.bool(), idx, -1).amax(-1)


class _CrossScorer(_Scorer):
    """Shared state: the bridge and the RM attention mask (one row per cache row)."""

    def __init__(self, term: RewardTerm, bridge: TokenizerBridge):
        self.bridge = bridge
        super().__init__(term)

    def reset(self):
        super().reset()
        self.state: BridgeState | None = None
        self.rm_mask: torch.Tensor | None = None  # (R, L) long over the cache's columns

    def prefill(self, ids, mask, cand):
        with _eval_mode(self.model):  # dropout off while scoring; the model's own mode is given back
            return self._prefill(ids, mask, cand)

    def step(self, new_tok, mask, beam_idx, cand):
        with _eval_mode(self.model):
            return self._step(new_tok, mask, beam_idx, cand)

    def _start(self, ids, mask) -> tuple[torch.Tensor, torch.Tensor]:
        self.state = self.bridge.start(ids, mask)
        rm_ids, rm_mask = self.state.prefix_batch("left")  # (N, L)
        return rm_ids.to(self.model.device), rm_mask.to(self.model.device)


# --------------------------------------------------------------------------------------------------------------------
class CrossRadVScorer(_CrossScorer):
    """RAD-V through text: a one-token forward over N·k rows per step, then the few longer candidates (see the module
    docstring)."""

    def reset(self):
        super().reset()
        self.cand = None  # (N, k) LM candidates of the last step
        self.pieces: CandidatePieces | None = None
        self.prefix_reward = None  # (N,) value of the current RM prefix (zero-token candidates)

    def _prefill(self, ids, mask, cand):
        rm_ids, rm_mask = self._start(ids, mask)
        if not bool(rm_mask.any(-1).all()):
            raise ValueError("Cross-tokenizer RAD-V needs some prompt text in every row (an RM prefix to score).")
        self._check_length(rm_ids.shape[1] + 1)
        hidden, self.cache = self.model.encode(rm_ids, rm_mask, use_cache=True)
        self.prefix_reward = self.model.score_hidden(hidden[:, -1], label=self.label)  # (N,) left-padded: last = real
        self.rm_mask = rm_mask
        self._expand(cand.shape[1])
        return self._score(cand)

    def _step(self, new_tok, mask, beam_idx, cand):
        device = self.model.device
        N, k_prev = self.cand.shape
        src = beam_idx.to(device) if beam_idx is not None else torch.arange(N, device=device)  # (N,)
        chosen = (self.cand[src] == new_tok.to(device)).int().argmax(-1)  # (N,), 0 for a token outside
        rows = src * k_prev + chosen  # (N,) the cache rows that continue
        self.prefix_reward = self.last_reward[rows]  # value of the chosen candidate's text
        held = self._row_contents(src.tolist(), chosen.tolist())  # RM ids each kept cache row holds
        if beam_idx is not None:
            self.state.reorder(beam_idx)
        self.state.advance(new_tok[:, 0])
        fix_ids, fix_mask, fix_back = self._corrections(held)
        k = cand.shape[1]
        if bool(fix_mask.any()) or bool(fix_back.any()):  # down to the N rows, bring them up to date, k copies each
            self._keep(rows)
            self._correct(fix_ids, fix_mask, fix_back)
            self._expand(k)
        else:  # the common case: every kept row holds the bridge's prefix already, one gather to N·k rows
            self._keep(rows.repeat_interleave(k))
        return self._score(cand)

    def _keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.rm_mask = self.rm_mask[rows]

    def _expand(self, k: int) -> None:
        """Each of the N cache rows k times, one per candidate."""
        self.cache.batch_repeat_interleave(k)
        self.rm_mask = self.rm_mask.repeat_interleave(k, 0)

    def _row_contents(self, src: list[int], chosen: list[int]) -> list[list[int]]:
        """RM ids of the kept cache rows: the old prefix with the chosen candidate's rollback and first piece (the
        main cache holds only the first piece; `_score` fed the later ones to a copy of the row)."""
        out = []
        for s, j in zip(src, chosen, strict=True):
            prefix = self.old_prefix[s]
            back = int(self.pieces.rollback[s, j])
            out.append(prefix[: len(prefix) - back] + self.pieces.ids[s, j][self.pieces.mask[s, j]].tolist()[:1])
        return out

    def _corrections(self, held: list[list[int]]):
        """What to roll back and feed so that each cache row holds the bridge's RM prefix: (N, F) ids and mask,
        (N,) rollback. Rows that change get at least one token fed (its value is the new prefix's reward)."""
        new = self.state.prefix_ids()
        keep = [common_prefix_len(a, b) for a, b in zip(held, new, strict=True)]
        for n, (a, b) in enumerate(zip(held, new, strict=True)):
            if 0 < keep[n] == len(b) < len(a):
                # Only drops tokens (it followed a token outside its candidates, e.g. padding after EOS): re-feed the
                # last kept token too, whose value is the reward of candidates that add no RM token.
                keep[n] -= 1
        back = torch.tensor([len(a) - n for a, n in zip(held, keep, strict=True)], dtype=torch.long)
        ids, m = pad_right([b[n:] for b, n in zip(new, keep, strict=True)])
        return ids, m, back

    def _correct(self, fix_ids, fix_mask, fix_back):
        """Bring the N kept rows to the bridge's RM prefix: the chosen candidate's later pieces, re-syncs, rows that
        followed a token outside their candidates. One forward over N rows (not N·k)."""
        device = self.model.device
        mask = drop_last_real(self.rm_mask, fix_back.to(device))
        mask = torch.cat([mask, fix_mask.long().to(device)], 1)  # (N, L + F)
        self._check_length(int(mask.sum(-1).max()))
        hidden, self.cache = self.model.encode(fix_ids.to(device), mask, cache=self.cache, use_cache=True)
        self.rm_mask = mask
        last = _last_real(fix_mask.to(device))  # (N,) −1: the row did not change
        values = self.model.score_hidden(hidden[torch.arange(len(last), device=device), last.clamp(min=0)],
                                         label=self.label)  # fmt: skip
        self.prefix_reward = torch.where(last >= 0, values, self.prefix_reward.to(device))

    def _score(self, cand):
        """Each candidate's first piece in one forward over N·k rows (rolled back by masking); the candidates with
        more pieces (a few per step) then go through a copy of their cache rows, so that the forward over all rows
        stays one token wide."""
        device = self.model.device
        N, k = cand.shape
        self.cand = cand.to(device)
        self.old_prefix = self.state.prefix_ids()
        self.pieces = pieces = self.state.candidates(cand)  # (N, k, S)
        ids, pmask = pieces.ids.view(N * k, -1).to(device), pieces.mask.view(N * k, -1).to(device)
        if ids.shape[1] == 0:  # no candidate adds an RM token: a masked column keeps the shapes
            ids, pmask = ids.new_zeros(N * k, 1), pmask.new_zeros(N * k, 1)
        kept = drop_last_real(self.rm_mask, pieces.rollback.view(-1).to(device))  # (N·k, L)
        self._check_length(int((kept.sum(-1) + pmask.sum(-1)).max()))
        mask = torch.cat([kept, pmask[:, :1].long()], 1)  # (N·k, L + 1)
        hidden, self.cache = self.model.encode(ids[:, :1], mask, cache=self.cache, use_cache=True)
        self.rm_mask = mask
        values = self.model.score_hidden(hidden[:, -1], label=self.label)  # (N·k,)
        prefix = self.prefix_reward.to(device).repeat_interleave(k)
        values = torch.where(pmask[:, 0], values, prefix)
        longer = (pmask.sum(-1) > 1).nonzero()[:, 0]  # (M,) candidates with later pieces
        if len(longer):
            rest, rest_mask = ids[longer, 1:], pmask[longer, 1:]  # (M, S − 1)
            sub = _select_rows(self.cache, longer)
            h = self.model.encode(rest, torch.cat([mask[longer], rest_mask.long()], 1), cache=sub, use_cache=True)[0]
            last = _last_real(rest_mask)  # (M,) ≥ 0
            values[longer] = self.model.score_hidden(h[torch.arange(len(longer), device=device), last],
                                                     label=self.label)  # fmt: skip
        self.last_reward = values  # (N·k,)
        return values.view(N, k)


def _select_rows(cache, rows: torch.Tensor):
    """A cache holding copies of `rows` of `cache` (which stays as it is): forwards on it append to the copy only."""
    sub = copy.copy(cache)
    sub.layers = [copy.copy(layer) for layer in cache.layers]
    sub.batch_select_indices(rows)  # each layer's keys/values re-bound to gathered copies
    return sub


# --------------------------------------------------------------------------------------------------------------------
class CrossRadQScorer(_CrossScorer):
    """RAD-Q through text: one cached forward per step over the chosen token's RM pieces (module docstring)."""

    window = 32  # hidden states kept per row (RM positions a candidate may roll back to)

    def __init__(self, term: RewardTerm, bridge: TokenizerBridge):
        if term.reward_model.config.bos_token_id is None:
            raise ValueError("RAD-Q prepends BOS to the prompt: set `bos_token_id` in the reward model's config.")
        super().__init__(term, bridge)

    def reset(self):
        super().reset()
        self.hist = None  # (N, W, d) hidden states after the last W RM positions, right-aligned
        self.hist_ok = None  # (N, W) bool

    def _prefill(self, ids, mask, cand):
        rm_ids, rm_mask = self._start(ids, mask)
        self._check_length(rm_ids.shape[1] + 1)
        bos = torch.full_like(rm_ids[:, :1], self.model.config.bos_token_id)
        rm_ids, rm_mask = torch.cat([bos, rm_ids], 1), torch.cat([torch.ones_like(bos), rm_mask], 1)
        hidden, self.cache = self.model.encode(rm_ids, rm_mask, use_cache=True)  # (N, 1 + L, d)
        self.rm_mask = rm_mask
        N, _, d = hidden.shape
        self.hist = hidden.new_zeros(N, 0, d)
        self.hist_ok = torch.zeros(N, 0, dtype=torch.bool, device=hidden.device)
        self._push(hidden, rm_mask.bool(), torch.zeros(N, dtype=torch.long))
        return self._score(cand)

    def _step(self, new_tok, mask, beam_idx, cand):
        device = self.model.device
        if beam_idx is not None:
            idx = beam_idx.to(device)
            self.cache.reorder_cache(idx)
            self.rm_mask, self.hist, self.hist_ok = self.rm_mask[idx], self.hist[idx], self.hist_ok[idx]
            self.state.reorder(beam_idx)
        update = self.state.advance(new_tok[:, 0])
        if bool(update.mask.any()) or bool(update.rollback.any()):  # all rows may have added nothing (half chars)
            back = update.rollback.to(device)
            mask = torch.cat([drop_last_real(self.rm_mask, back), update.mask.long().to(device)], 1)
            self._check_length(int(mask.sum(-1).max()))
            hidden, self.cache = self.model.encode(update.ids.to(device), mask, cache=self.cache, use_cache=True)
            self.rm_mask = mask
            self._push(hidden, update.mask.to(device), back)
        return self._score(cand)

    def _push(self, hidden, new_ok, back):
        """Drop the last `back` (N,) kept states, append the real ones of `hidden` (N, S, d), keep the last W."""
        ok = torch.cat([drop_last_real(self.hist_ok.long(), back).bool(), new_ok], 1)  # (N, W' + S)
        states = torch.cat([self.hist, hidden], 1)
        W = min(self.window, states.shape[1])
        key = ok.long() * torch.arange(1, ok.shape[1] + 1, device=ok.device)  # invalid first, then in order
        order = key.sort(dim=-1).indices[:, -W:]  # (N, W) right-aligned
        self.hist = states.gather(1, order[..., None].expand(-1, -1, states.shape[-1]))
        self.hist_ok = ok.gather(1, order)

    def _hidden_before(self, back: torch.Tensor) -> torch.Tensor:
        """Hidden state after the RM prefix without its last `back` (N, k) tokens: (N, k, d)."""
        W = self.hist.shape[1]
        idx = (W - 1 - back).clamp(min=0)  # (N, k)
        h = self.hist.gather(1, idx[..., None].expand(-1, -1, self.hist.shape[-1]))
        beyond = back >= self.hist_ok.sum(-1, keepdim=True)  # (N, k) rolls back past the kept states: rare
        if bool(beyond.any()):
            h = h.clone()
            prefixes = self.state.prefix_ids()
            for n, j in beyond.nonzero().tolist():  # re-encode that shorter prefix without the cache
                ids = [self.model.config.bos_token_id] + prefixes[n][: len(prefixes[n]) - int(back[n, j])]
                h[n, j] = self.model.encode(torch.tensor([ids], device=h.device))[0][0, -1]
        return h

    def _score(self, cand):
        device = self.model.device
        pieces = self.state.candidates(cand)  # (N, k, S)
        # The candidate's first own token: after the pieces that only re-tokenize the dropped prefix text, on the
        # whole prefix (same text, already encoded); else the first piece, on the prefix it keeps.
        reread = pieces.reread.to(device)  # (N, k)
        back = torch.where(reread > 0, 0, pieces.rollback.to(device))
        first = pieces.ids.to(device).gather(-1, reread[..., None])[..., 0]  # (N, k)
        h = self._hidden_before(back)  # (N, k, d)
        r_first = self.model.score_hidden(h, first[..., None], label=self.label)[..., 0]  # (N, k)
        return torch.where(pieces.n_tokens.to(device) > 0, r_first, self._text_reward()[:, None])

    def _text_reward(self) -> torch.Tensor:
        """RAD-Q reward of the current text (N,): its last RM token given the ones before; BOS baseline if empty."""
        last = torch.tensor(self.state.last_ids(), device=self.hist.device)  # (N,), −1: no text yet
        has = last >= 0
        h = self._hidden_before(has.long()[:, None])[:, 0]  # (N, d) before the last token; at BOS without text
        r_tok = self.model.score_hidden(h, last.clamp(min=0)[:, None], label=self.label)[:, 0]
        return torch.where(has, r_tok, self.model._baselines(h)[:, self.label])


def make_cross_scorer(term: RewardTerm, bridge: TokenizerBridge, model_type: str) -> _Scorer:
    """The cross-tokenizer scorer of a RAD-V or RAD-Q term (called by `decoding._make_scorer`)."""
    return {"rad_v": CrossRadVScorer, "rad_q": CrossRadQScorer}[model_type](term, bridge)


__all__ = ["CrossRadQScorer", "CrossRadVScorer", "drop_last_real", "make_cross_scorer"]
