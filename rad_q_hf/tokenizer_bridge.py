"""Cross-tokenizer bridge: the LM's tokens turned into the reward model's tokens, through text (layer 3).

RAD needs, at every step, the reward-model (RM) tokens of `prefix ⊕ candidate` for each of the LM's top-k candidates.
When the LM and the RM tokenize differently, the only common ground is the text. Decoding one LM token alone is
wrong in general: its text depends on its neighbours (SentencePiece's `▁` marker, byte-fallback tokens that are half
a UTF-8 character) and the RM tokenizer may merge across the boundary. So each row keeps:

- the LM text as **bytes** (every LM token contributes a fixed byte string; see [`token_bytes`]), of which only
  complete UTF-8 characters are text: an unfinished character is held back (`pending`) until a later token ends it;
- a **committed** RM prefix: RM tokens that were checked to re-tokenize identically when cut there, and which are not
  re-tokenized again;
- a **tail**: the text after the committed tokens (a few RM tokens, `hold_tokens`), re-tokenized with each candidate.

A candidate's RM tokens are then `committed + encode(tail + candidate text)`; against the current RM prefix
`committed + encode(tail)` this is "drop the last `rollback` prefix tokens, append `pieces`". In the common case
`rollback = 0` and `pieces` is one token, but it can be several tokens (one LM token covers more text than one RM
token) or none (half a UTF-8 character, a special token, a token whose text the RM merges into its previous token).

**Exactness.** `encode(committed text + tail + c) == committed + encode(tail + c)` holds unless the RM tokenizer merges
across the committed boundary; after every step the row is compared with `encode(full text)` (`resync_every`) and
re-synced when it drifted, so the RM prefix is always exactly the full-text tokenization, and only a candidate's
pieces can (rarely) differ from re-tokenizing the whole text. The slow reference is [`reference_rm_ids`].

Example:

```python
>>> from tokenizers import Tokenizer, decoders, models, pre_tokenizers
>>> from transformers import PreTrainedTokenizerFast
>>> def byte_level(vocab, merges):
...     tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
...     tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
...     tok.decoder = decoders.ByteLevel()
...     return PreTrainedTokenizerFast(tokenizer_object=tok)
>>> chars = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
>>> lm = byte_level(chars | {"ab": 256}, [("a", "b")])
>>> rm = byte_level(chars | {"bc": 256}, [("b", "c")])
>>> state = TokenizerBridge(lm, rm).start(torch.tensor([lm.encode("ab")]))
>>> state.prefix_ids() == [rm.encode("ab")]
True
>>> pieces = state.candidates(torch.tensor([[chars["c"]]]))  # "ab" + "c": the RM now reads "a" + "bc"
>>> pieces.rollback.tolist(), pieces.ids[pieces.mask].tolist() == [256]
([[1]], True)

```
"""

import json
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

__all__ = [
    "BridgeState",
    "CandidatePieces",
    "PrefixUpdate",
    "TokenizerBridge",
    "common_prefix_len",
    "incomplete_utf8_tail",
    "pad_right",
    "reference_rm_ids",
    "token_bytes",
]

# Texts every supported tokenizer must decode token by token exactly as its own `decode` does (checked once).
_PROBES = ["Hello world, it's fine.", "  two  spaces\tand\nnewline", "naïve café – 東京 🙂!", "x"]


# --------------------------------------------------------------------------------------------------------------------
# bytes of LM tokens
def _byte_level_decoder_map() -> dict[str, int]:
    """Inverse of GPT-2's bytes → printable-unicode map used by byte-level BPE vocabularies."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def _decoder_spec(tokenizer) -> dict:
    """The backend tokenizer's decoder as JSON, flattened to a list of steps."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
    return spec.get("decoders", [spec]) if spec.get("type") == "Sequence" else [spec]


def token_bytes(tokenizer) -> tuple[list[bytes], bool]:
    """Cached per tokenizer object (building the table of a 262k vocabulary takes a second); see [`_token_bytes`]."""
    cached = _TABLES.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        cached = _TABLES[id(tokenizer)] = (tokenizer, *_token_bytes(tokenizer))
    return cached[1], cached[2]


_TABLES: dict[int, tuple] = {}  # id(tokenizer) -> (tokenizer, table, strip_first_space); holds the tokenizer alive


def _token_bytes(tokenizer) -> tuple[list[bytes], bool]:
    """The bytes each token id adds to the text, and whether the text's first leading space is dropped.

    Special tokens add nothing (as `decode(..., skip_special_tokens=True)`). Supported decoders: byte-level BPE
    (GPT-2, Llama-3, SmolLM2, Qwen) and SentencePiece-style ones (`▁` → space, `<0xNN>` byte fallback, optionally
    stripping the first leading space: Llama-2, Gemma). The table is checked against the tokenizer's own `decode`.
    """
    steps = _decoder_spec(tokenizer)
    types = {s.get("type") for s in steps}
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    specials = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special} | set(tokenizer.all_special_ids)
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items() if not t.special}
    strip_first_space = False
    if "ByteLevel" in types:
        inverse = _byte_level_decoder_map()

        def one(piece: str) -> bytes:
            return bytes(inverse[c] for c in piece) if all(c in inverse for c in piece) else piece.encode()

    elif types <= {"Replace", "ByteFallback", "Fuse", "Strip", "Metaspace"} and types:
        replace = [(s["pattern"]["String"], s["content"]) for s in steps if s.get("type") == "Replace"]
        for s in steps:
            if s.get("type") == "Metaspace":
                replace.append((s.get("replacement", "▁"), " "))
                strip_first_space |= s.get("prepend_scheme", "always") != "never" and s.get("add_prefix_space", True)
            if s.get("type") == "Strip" and s.get("content") == " " and s.get("start", 0) > 0:
                strip_first_space = True
        byte_fallback = "ByteFallback" in types

        def one(piece: str) -> bytes:
            if byte_fallback and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                return bytes([int(piece[3:5], 16)])
            for old, new in replace:
                piece = piece.replace(old, new)
            return piece.encode()

    else:
        raise ValueError(f"Unsupported tokenizer decoder {sorted(types)} for cross-tokenizer decoding.")
    table = [b"" if i in specials else added[i].encode() if i in added else one(p or "") for i, p in enumerate(pieces)]
    _check_table(tokenizer, table, strip_first_space)
    return table, strip_first_space


def _check_table(tokenizer, table: list[bytes], strip_first_space: bool) -> None:
    for text in _PROBES:
        ids = tokenizer.encode(text, add_special_tokens=False)
        mine = _strip(b"".join(table[i] for i in ids), strip_first_space).decode("utf-8", "replace")
        theirs = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if mine != theirs:
            raise ValueError(
                f"{type(tokenizer).__name__}: token-by-token decoding gives {mine!r} but decode() gives {theirs!r}: "
                "this tokenizer is not supported for cross-tokenizer decoding."
            )


def _strip(text: bytes, strip_first_space: bool) -> bytes:
    return text[1:] if strip_first_space and text[:1] == b" " else text


def incomplete_utf8_tail(data: bytes) -> int:
    """Number of trailing bytes that start a UTF-8 character not finished yet (0–3).

    >>> incomplete_utf8_tail("é".encode()[:1]), incomplete_utf8_tail("é".encode()), incomplete_utf8_tail(b"\\xf0\\x9f")
    (1, 0, 2)
    """
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 == 0x80:  # continuation byte: look further back for the lead byte
            continue
        need = 2 if 0xC0 <= b < 0xE0 else 3 if 0xE0 <= b < 0xF0 else 4 if 0xF0 <= b < 0xF8 else 1
        return back if back < need else 0
    return 0  # only continuation bytes: invalid, decoded as U+FFFD like `decode` does


def _split_text(data: bytes) -> tuple[str, bytes]:
    """Complete characters of `data` as text (invalid bytes → U+FFFD), and the unfinished character's bytes."""
    n = incomplete_utf8_tail(data)
    cut = len(data) - n
    return data[:cut].decode("utf-8", "replace"), data[cut:]


def reference_rm_ids(lm_tokenizer, rm_tokenizer, lm_ids: list[int]) -> list[int]:
    """Slow, obviously-correct reference: the RM tokens of the LM text, re-tokenized whole.

    The LM text is the tokens' bytes (special tokens skipped) without a trailing unfinished UTF-8 character: a naive
    `lm_tokenizer.decode` would turn such half a character into U+FFFD, which the bridge deliberately never shows to
    the reward model (it waits for the character's remaining bytes).
    """
    table, strip_first_space = token_bytes(lm_tokenizer)
    text, _ = _split_text(_strip(b"".join(table[i] for i in lm_ids), strip_first_space))
    return rm_tokenizer.encode(text, add_special_tokens=False)


# --------------------------------------------------------------------------------------------------------------------
# outputs
@dataclass
class CandidatePieces:
    """For each row and candidate: drop the last `rollback` RM prefix tokens, then append `ids[mask]`.

    ids: (N, k, S) RM token ids, right-padded with 0; mask: (N, k, S) bool; rollback: (N, k) long.
    reread: (N, k) long, how many leading pieces only re-tokenize the rolled-back prefix text (exactly its bytes,
    e.g. a prefix ending in `ĊĊ` that the candidate "The" turns into `Ċ Ċ The`: rollback 1, reread 2); 0 otherwise,
    in particular when the first piece straddles the old text and the candidate's ("hel" + "lo" → `hello`).
    """

    ids: torch.Tensor
    mask: torch.Tensor
    rollback: torch.Tensor
    reread: torch.Tensor

    @property
    def n_tokens(self) -> torch.Tensor:  # (N, k)
        return self.mask.sum(-1)


@dataclass
class PrefixUpdate:
    """How each row's RM prefix changed at `advance`: drop its last `rollback` tokens, append `ids[mask]`.

    ids: (N, S) right-padded with 0; mask: (N, S) bool; rollback: (N,) long; resynced: (N,) bool, rows whose
    incremental tokenization had drifted from the full-text one and were re-synced.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    rollback: torch.Tensor
    resynced: torch.Tensor


def pad_right(rows: list[list[int]], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad lists of ids: (len(rows), S) ids and bool mask, S ≥ 1 (an all-empty batch still has one column)."""
    S = max([width or 1] + [len(r) for r in rows])
    ids = torch.tensor([list(r) + [0] * (S - len(r)) for r in rows], dtype=torch.long).view(len(rows), S)
    mask = torch.arange(S) < torch.tensor([len(r) for r in rows], dtype=torch.long)[:, None]
    return ids, mask


def common_prefix_len(a, b) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


# --------------------------------------------------------------------------------------------------------------------
# state
@dataclass(frozen=True)
class _Row:
    """One row's text and RM tokens; never mutated (beam search may share a row between several beams)."""

    committed: tuple[int, ...] = ()  # RM ids that are not re-tokenized any more
    committed_text: str = ""  # the text they cover
    tail: str = ""  # complete text after them
    tail_ids: tuple[int, ...] = ()  # encode(tail)
    pending: bytes = b""  # bytes of an unfinished UTF-8 character
    started: bool = False  # some LM text was seen (the first leading space may be stripped only before)
    steps: int = 0

    @property
    def ids(self) -> list[int]:
        return list(self.committed + self.tail_ids)

    @property
    def text(self) -> str:
        return self.committed_text + self.tail


@dataclass
class _Extension:
    """A row's text extended by some LM bytes, not yet tokenized."""

    tail: str
    pending: bytes
    started: bool


class TokenizerBridge:
    r"""
    Turns an LM's tokens into a reward model's tokens through text, incrementally, for a batch of rows.

    Args:
        lm_tokenizer: the steered LM's tokenizer (byte-level BPE or SentencePiece-style).
        rm_tokenizer: the reward model's tokenizer (encoded without special tokens).
        hold_tokens: RM tokens kept in the re-tokenized tail (not committed); more = fewer cross-boundary misses.
        resync_every: compare each row with the full-text tokenization every this many steps and re-sync (0: never).

    See the module docstring for the definitions and an example; `start` gives a [`BridgeState`].
    """

    def __init__(self, lm_tokenizer, rm_tokenizer, hold_tokens: int = 2, resync_every: int = 1):
        if hold_tokens < 1:
            raise ValueError(f"`hold_tokens` must be ≥ 1, got {hold_tokens}.")
        self.lm_tokenizer, self.rm_tokenizer = lm_tokenizer, rm_tokenizer
        self.lm_bytes, self.strip_first_space = token_bytes(lm_tokenizer)
        self.hold_tokens, self.resync_every = hold_tokens, resync_every
        self._backend = Tokenizer.from_str(rm_tokenizer.backend_tokenizer.to_str())
        self._backend.no_padding()
        self._backend.no_truncation()
        self._check_rm_encodes_pieces()
        backend = rm_tokenizer.backend_tokenizer
        # Pre-token offsets are usable when the RM splits words before its merges and has no normalizer (offsets of a
        # normalized text would not be offsets into ours). Gemma-style tokenizers merge across words: no pre-tokens.
        self.rm_splits_words = (
            backend.normalizer is None
            and backend.pre_tokenizer is not None
            and len(backend.pre_tokenizer.pre_tokenize_str("hello world")) > 1
        )

    def _check_rm_encodes_pieces(self) -> None:
        """Tails are encoded mid-text: the RM tokenizer must not add text of its own (a SentencePiece dummy `▁`, a
        byte-level `add_prefix_space`), or every tail would get a spurious space."""
        table = self.rm_token_bytes  # also checks that the RM tokenizer decodes token by token
        for probe in ("a", "hello world"):
            got = b"".join(table[i] for i in self.encode([probe])[0])
            if got != probe.encode():
                raise ValueError(
                    f"The reward model's tokenizer encodes {probe!r} as {got!r} (it adds a prefix space): "
                    "cross-tokenizer decoding does not support it as the reward model's tokenizer."
                )

    def encode(self, texts: list[str]) -> list[list[int]]:
        """RM ids of several texts in one batched call, without special tokens."""
        if not texts:
            return []
        # Our own copy of the backend, without padding or truncation: the same ids as `rm_tokenizer(texts,
        # add_special_tokens=False)`, less overhead, and immune to the padding / truncation state that a call like
        # `rm_tokenizer(texts, padding=True)` leaves on the shared backend.
        return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> "BridgeState":
        """State for rows of LM ids (N, P); `attention_mask` (N, P) marks the real tokens (padding on any side)."""
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        exts = [
            self.extend(_Row(), [int(t) for t in row[m]]) for row, m in zip(input_ids.cpu(), mask.cpu(), strict=True)
        ]
        tails = self.encode([e.tail for e in exts])
        rows = [
            self.commit(_Row(tail=e.tail, tail_ids=tuple(i), pending=e.pending, started=e.started))
            for e, i in zip(exts, tails, strict=True)
        ]
        return BridgeState(self, rows)

    def extend(self, row: _Row, lm_ids: list[int]) -> _Extension:
        """The row's tail extended by LM tokens' bytes (an unfinished UTF-8 character stays pending)."""
        data = row.pending + b"".join(self.lm_bytes[i] if 0 <= i < len(self.lm_bytes) else b"" for i in lm_ids)
        started = row.started or bool(data)
        if not row.started:
            data = _strip(data, self.strip_first_space)  # a SentencePiece dummy prefix at the text's start
        text, pending = _split_text(data)
        return _Extension(row.tail + text, pending, started)

    def commit(self, row: _Row) -> _Row:
        """Move all but the last `hold_tokens` tail tokens into the committed prefix.

        The cut must re-tokenize identically now (`encode(rest) == rest's ids`) and, where the RM tokenizer splits
        text into pre-tokens before its merges (byte-level BPE's regex), lie at a pre-token boundary before the last
        pre-token: merges never cross those, and appending text cannot move them. Without pre-tokens (SentencePiece
        style, merges across words) any token boundary is allowed and re-sync catches the rare merge that reaches
        back further. Without an acceptable cut nothing is committed this step.
        """
        ids = row.tail_ids
        allowed = self._pretoken_cuts(row.tail)
        for j in range(len(ids) - self.hold_tokens, max(0, len(ids) - self.hold_tokens - 4), -1):  # a few cuts
            cut = len(b"".join(self.rm_token_bytes[i] for i in ids[:j]))
            try:
                head_text = row.tail.encode()[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue  # the cut falls inside a character (byte-level BPE splits some): try an earlier one
            if allowed is not None and len(head_text) not in allowed:
                continue
            rest = row.tail[len(head_text) :]
            if tuple(self.encode([rest])[0]) == ids[j:]:
                return _Row(
                    row.committed + ids[:j],
                    row.committed_text + head_text,
                    rest,
                    ids[j:],
                    row.pending,
                    row.started,
                    row.steps,
                )
        return row

    def _pretoken_cuts(self, text: str) -> set[int] | None:
        """Character offsets of the RM pre-token boundaries that appending text cannot move (None: no pre-tokens)."""
        if not self.rm_splits_words:
            return None
        starts = [start for _, (start, _) in self.rm_tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]
        return set(starts[1:])  # each start but the first; the last pre-token may still grow, its start stays

    @property
    def rm_token_bytes(self) -> list[bytes]:
        if not hasattr(self, "_rm_bytes"):
            self._rm_bytes, _ = token_bytes(self.rm_tokenizer)
        return self._rm_bytes


@dataclass
class BridgeState:
    """The rows' texts and RM prefixes during one `generate` call (see [`TokenizerBridge`])."""

    bridge: TokenizerBridge
    rows: list[_Row]
    _last: dict = field(default_factory=dict)  # (row, lm id) -> new tail ids, from the last `candidates`

    def prefix_ids(self) -> list[list[int]]:
        """Each row's RM prefix: committed + tail tokens."""
        return [r.ids for r in self.rows]

    def last_ids(self) -> list[int]:
        """Each row's last RM token id, −1 for a row without any."""
        return [(r.tail_ids or r.committed or (-1,))[-1] for r in self.rows]

    def texts(self) -> list[str]:
        """Each row's complete text (without a pending half character)."""
        return [r.text for r in self.rows]

    def prefix_batch(self, padding_side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
        """The RM prefixes padded into (N, L) ids (pad 0) and a long mask."""
        rows = self.prefix_ids()
        if padding_side == "left":
            ids, mask = pad_right([r[::-1] for r in rows])
            return ids.flip(-1), mask.flip(-1).long()
        ids, mask = pad_right(rows)
        return ids, mask.long()

    def candidates(self, cand: torch.Tensor) -> CandidatePieces:
        """RM pieces of each LM candidate (N, k) given its row's text: one batched RM tokenizer call."""
        N, k = cand.shape
        flat = cand.cpu().tolist()
        exts = [self.bridge.extend(self.rows[i], [c]) for i in range(N) for c in flat[i]]
        new_tails = self._encode_tails([e.tail for e in exts], [i for i in range(N) for _ in range(k)])
        self._last = {}
        pieces, rollback, reread = [], [], []
        for n, (ext, ids) in enumerate(zip(exts, new_tails, strict=True)):
            row, c = self.rows[n // k], flat[n // k][n % k]
            self._last[(n // k, c)] = (ext, ids)
            keep = common_prefix_len(row.tail_ids, ids)
            pieces.append(list(ids[keep:]))
            rollback.append(len(row.tail_ids) - keep)
            reread.append(self._reread(row.tail_ids[keep:], pieces[-1]) if rollback[-1] else 0)
        ids, mask = pad_right(pieces)
        as_nk = [torch.tensor(x, dtype=torch.long).view(N, k) for x in (rollback, reread)]
        return CandidatePieces(ids.view(N, k, -1), mask.view(N, k, -1), *as_nk)

    def _reread(self, dropped: tuple[int, ...], pieces: list[int]) -> int:
        """Number of leading `pieces` that cover exactly the bytes of the `dropped` prefix tokens (0: none do)."""
        table = self.bridge.rm_token_bytes
        target, covered = sum(len(table[t]) for t in dropped), 0
        for s, t in enumerate(pieces[:-1], start=1):  # at least one piece must be left: the candidate's own
            covered += len(table[t])
            if covered >= target:
                return s if covered == target else 0
        return 0

    def _encode_tails(self, tails: list[str], row_of: list[int]) -> list[tuple[int, ...]]:
        """encode(tail) for each text (one batched call over the distinct ones), reusing a row's own tail ids when
        the text did not grow (a candidate that adds no complete character)."""
        same = [t == self.rows[i].tail for t, i in zip(tails, row_of, strict=True)]
        unique = sorted({t for t, s in zip(tails, same, strict=True) if not s})
        encoded = dict(zip(unique, map(tuple, self.bridge.encode(unique)), strict=True))
        return [self.rows[i].tail_ids if s else encoded[t] for t, i, s in zip(tails, row_of, same, strict=True)]

    def advance(self, tokens: torch.Tensor) -> PrefixUpdate:
        """Append the LM's chosen token (N,) to each row; returns how each RM prefix changed."""
        old = [r.ids for r in self.rows]
        chosen = tokens.cpu().tolist()
        new_rows = []
        missing = [(i, c) for i, c in enumerate(chosen) if (i, c) not in self._last]
        exts = {(i, c): self.bridge.extend(self.rows[i], [c]) for i, c in missing}
        encoded = self._encode_tails([e.tail for e in exts.values()], [i for i, _ in missing])
        found = dict(self._last) | {key: (exts[key], ids) for key, ids in zip(missing, encoded, strict=True)}
        for i, c in enumerate(chosen):
            ext, ids = found[(i, c)]
            r = self.rows[i]
            new_rows.append(
                _Row(r.committed, r.committed_text, ext.tail, tuple(ids), ext.pending, ext.started, r.steps + 1)
            )
        resynced = self._resync(new_rows)
        self.rows = [self.bridge.commit(r) for r in new_rows]
        self._last = {}
        return self._update(old, resynced)

    def _resync(self, rows: list[_Row]) -> list[bool]:
        """Replace (in place) rows whose RM ids drifted from encode(full text); returns which rows were."""
        every = self.bridge.resync_every
        check = [i for i, r in enumerate(rows) if every and r.steps % every == 0]
        full = self.bridge.encode([rows[i].text for i in check])
        resynced = [False] * len(rows)
        for i, ids in zip(check, full, strict=True):
            r = rows[i]
            if list(ids) != r.ids:
                rows[i] = _Row((), "", r.text, tuple(ids), r.pending, r.started, r.steps)
                resynced[i] = True
        return resynced

    def _update(self, old: list[list[int]], resynced: list[bool]) -> PrefixUpdate:
        new = self.prefix_ids()
        keep = [common_prefix_len(a, b) for a, b in zip(old, new, strict=True)]
        ids, mask = pad_right([b[n:] for b, n in zip(new, keep, strict=True)])
        rollback = torch.tensor([len(a) - n for a, n in zip(old, keep, strict=True)], dtype=torch.long)
        return PrefixUpdate(ids, mask, rollback, torch.tensor(resynced))

    def reorder(self, index: torch.Tensor) -> None:
        """Rows follow `index` (N,) (beam search reordering; rows may repeat)."""
        self.rows = [self.rows[i] for i in index.cpu().tolist()]
        self._last = {}
