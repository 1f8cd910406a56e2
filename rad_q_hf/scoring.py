"""Reading rewards off a RAD-V or RAD-Q reward model: of every prefix, of whole texts, of candidate next tokens.

The one place training, evaluation, analysis and the CLI read rewards from (layer 3 of docs/ARCHITECTURE.md). Every
function takes `(input_ids, attention_mask)` padded on **either side** (or both, or not at all) and gives the same
rewards for the same real tokens:

    >>> import torch
    >>> from transformers import GPT2Config
    >>> from rad_q_hf import RadQConfig, RadQForRewardModeling
    >>> from rad_q_hf.scoring import last_token, prefix_rewards
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> config = RadQConfig(backbone_config=GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, bos_token_id=0))
    >>> model = RadQForRewardModeling(config).eval()
    >>> _ = torch.nn.init.normal_(model.reward_head.weight, std=0.1)  # a fresh W is 0: make rewards token-dependent
    >>> right = torch.tensor([[5, 6, 7], [8, 9, 2]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    >>> left = torch.tensor([[5, 6, 7], [2, 8, 9]]), torch.tensor([[1, 1, 1], [0, 1, 1]])
    >>> with torch.no_grad():
    ...     a, b = (last_token(prefix_rewards(model, *batch)[0], batch[1]) for batch in (right, left))
    >>> a.shape, torch.allclose(a, b, atol=1e-6), bool(a[0, 0] != a[1, 0])  # (B, n_labels), same on both sides
    (torch.Size([2, 1]), True, True)

RAD-V's value head reads the prefix's own last state. RAD-Q reads the reward of prefix `x≤t` as the reward of the
observed token `x_t` after `BOS + x<t` (teacher forcing), so it runs on `BOS + x` and each prefix is read at the
previous *real* position, querying the next *real* token: no `(B, T, |V|)` tensor is built.
"""

import math

import torch
from torch import nn
from tqdm.auto import tqdm


def config_of(model: nn.Module):
    """The reward model's config, also through a DDP / accelerate wrapper."""
    return getattr(model, "module", model).config


def is_rad_q(model: nn.Module) -> bool:
    return getattr(config_of(model), "model_type", None) == "rad_q"


def with_bos(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """`BOS + x` and its mask, (B, T + 1). BOS goes in column 0 whatever the padding: the mask hides the pads between
    it and a left-padded text, and positions count real tokens only, so the row reads as the unpadded `BOS + x`."""
    bos = config_of(model).bos_token_id
    if bos is None:
        raise ValueError("RAD-Q puts BOS before each text, but the reward model's config has no bos_token_id.")
    B = input_ids.shape[0]
    ids = torch.cat([input_ids.new_full((B, 1), bos), input_ids], dim=1)
    mask = torch.cat([attention_mask.new_ones(B, 1), attention_mask], dim=1)
    return ids, mask


def _previous_and_next_real(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each column j of a (B, P) mask: the last real column ≤ j, and the first real column > j (P if none).

    Column 0 must be real (BOS), so every column has a previous real one.
    """
    P = mask.shape[1]
    cols = torch.arange(P, device=mask.device).expand_as(mask)  # (B, P)
    real = mask.bool()
    prev = torch.where(real, cols, 0).cummax(dim=1).values  # (B, P)
    first_from = torch.where(real, cols, P).flip(1).cummin(dim=1).values.flip(1)  # (B, P) first real ≥ j
    nxt = torch.cat([first_from[:, 1:], first_from.new_full((mask.shape[0], 1), P)], dim=1)  # (B, P) first real > j
    return prev, nxt


def prefix_rewards(model: nn.Module, input_ids, attention_mask, extra_query_ids=None):
    """Reward of every prefix `x≤t` of padded texts (any padding side), (B, T, n_labels), and the raw model output.

    Entries at pad positions are meaningless (mask them). RAD-V: the value at each position. RAD-Q: one forward of
    `BOS + x` (B, T + 1), where the row at column p holds the prefix of the real tokens up to p and queries the next
    real token; `extra_query_ids` (B, T + 1, k) are scored too, in `out.rewards[..., 1:]`, after the same prefixes.
    """
    if not is_rad_q(model):
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        return out.rewards, out  # (B, T, L)
    ids, mask = with_bos(model, input_ids, attention_mask)  # (B, P = T + 1)
    prev, nxt = _previous_and_next_real(mask)  # (B, P)
    # Column p queries the next real token (right padding: simply x_{p+1}); the last real column queries a dummy.
    observed = ids.gather(1, nxt.clamp(max=ids.shape[1] - 1))[..., None]  # (B, P, 1)
    queries = observed if extra_query_ids is None else torch.cat([observed, extra_query_ids], dim=-1)
    out = model(input_ids=ids, attention_mask=mask, query_ids=queries)  # rewards (B, P, L, 1 + k)
    # The reward of x≤t (column t + 1 of BOS + x) sits at the real column before it, which queried x_t.
    observed_rewards = out.rewards[..., 0]  # (B, P, L)
    src = prev[:, :-1, None].expand(-1, -1, observed_rewards.shape[-1])  # (B, T, L)
    return observed_rewards.gather(1, src), out


def last_token(rewards: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The reward of each whole text, read at its rightmost real token (any padding side): (B, T, L) → (B, L)."""
    T = attention_mask.shape[1]
    last = (torch.arange(T, device=attention_mask.device) * attention_mask.long()).argmax(1)  # (B,)
    return rewards[torch.arange(rewards.shape[0], device=rewards.device), last]


@torch.no_grad()
def text_rewards(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    batch_size: int = 32,
    max_length: int | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Raw rewards of whole texts, (N, n_labels), in the order given (tokenized without special tokens, any padding
    side). Texts are batched in order of length, so that a batch pads few tokens; `progress` shows a bar. A text
    with no scored token (empty; a single token for the trunk kind, whose first token has no prefix state) has no
    reward: NaN, which the metrics skip, rather than the reward read at a pad or BOS position."""
    device = next(model.parameters()).device
    texts = list(texts)  # a `datasets` column is a sequence, not the list a tokenizer wants
    if not texts:
        return torch.empty(0, config_of(model).num_labels)
    ids = tokenizer(texts, add_special_tokens=False, truncation=max_length is not None, max_length=max_length)
    ids = ids["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))  # shortest first
    rows, n_labels = [], config_of(model).num_labels
    for start in tqdm(range(0, len(texts), batch_size), desc="scoring texts", disable=not progress, leave=False):
        chunk = [ids[i] for i in order[start : start + batch_size]]
        if not any(chunk):  # only empty texts (the shortest come first): nothing to run the model on
            rows.append(torch.full((len(chunk), n_labels), math.nan, device=device))
            continue
        batch = tokenizer.pad({"input_ids": chunk}, padding=True, return_tensors="pt").to(device)
        rewards, out = prefix_rewards(model, batch["input_ids"], batch["attention_mask"])
        scored = getattr(out, "reward_mask", None)
        scored = batch["attention_mask"] if scored is None else scored  # (b, T)
        row = last_token(rewards, batch["attention_mask"]).float()  # (b, n_labels)
        rows.append(row.masked_fill(~scored.bool().any(1, keepdim=True), math.nan))
    by_length = torch.cat(rows)
    out = torch.empty_like(by_length)
    out[torch.tensor(order, device=by_length.device)] = by_length  # back to the caller's order
    return out


def score_texts(model: nn.Module, tokenizer, texts: list[str], label: int = 0, batch_size: int = 32) -> list[float]:
    """Reward of each whole text (its last prefix) for one `label`, clamped to [0, 1] as decoding uses it."""
    return text_rewards(model, tokenizer, texts, batch_size)[:, label].clamp(0, 1).tolist()


@torch.no_grad()
def candidate_values(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, candidates: torch.Tensor
) -> torch.Tensor:
    """RAD-V values of `x<p ⊕ v` for every position p = 0..T and candidate v, in one forward per batch.

    input_ids, attention_mask: (B, T) padded text (any side); candidates: (B, T + 1, k), `candidates[:, p]` following
    the real tokens among x1..x_p (p = 0: an empty prefix). Returns (B, T + 1, k, n_labels). Every candidate attends
    to its own prefix through a 4D attention mask and sits at the position after it.
    """
    B, T = input_ids.shape
    k = candidates.shape[-1]
    P = T + 1
    device = input_ids.device
    ids = torch.cat([input_ids, candidates.reshape(B, P * k)], dim=1)  # (B, N), N = T + P·k
    real = attention_mask.bool()  # (B, T)
    real_before = torch.cat([real.new_zeros(B, 1, dtype=torch.long), real.long().cumsum(1)], 1)  # (B, P)
    text_pos = (real.long().cumsum(1) - 1).clamp(min=0)  # (B, T): pads do not count
    cand_pos = real_before.repeat_interleave(k, dim=1)  # (B, P·k): a candidate follows its prefix's real tokens
    position_ids = torch.cat([text_pos, cand_pos], dim=1)  # (B, N)

    text = torch.arange(T, device=device)
    prefix_len = torch.arange(P, device=device).repeat_interleave(k)  # (P·k,) columns of x before each candidate
    text_rows = (text[None, :, None] >= text[None, None, :]) & real[:, None, :]  # (B, T, T) causal over real keys
    cand_rows = (text[None, None, :] < prefix_len[None, :, None]) & real[:, None, :]  # (B, P·k, T) its own prefix
    allowed = torch.zeros(B, T + P * k, T + P * k, dtype=torch.bool, device=device)
    allowed[:, :T, :T] = text_rows
    allowed[:, T:, :T] = cand_rows
    allowed[:, T:, T:] = torch.eye(P * k, dtype=torch.bool, device=device)  # each candidate sees itself
    allowed[:, :T, :T] |= torch.eye(T, dtype=torch.bool, device=device)  # pads see themselves (no empty rows)
    dtype = next(model.parameters()).dtype
    mask4d = torch.zeros(B, 1, *allowed.shape[1:], dtype=dtype, device=device)
    mask4d.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)  # additive: works for eager and SDPA
    out = model(input_ids=ids, attention_mask=mask4d, position_ids=position_ids)
    return out.rewards[:, T:].reshape(B, P, k, -1)


__all__ = [
    "candidate_values",
    "config_of",
    "is_rad_q",
    "last_token",
    "prefix_rewards",
    "score_texts",
    "text_rewards",
    "with_bos",
]
