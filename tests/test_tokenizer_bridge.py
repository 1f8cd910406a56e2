"""The cross-tokenizer bridge against the slow reference (re-tokenize the whole text at every step).

Tiny in-process tokenizers disagree on purpose: two byte-level BPEs trained on different text (different merges), a
SentencePiece-style one (`▁`, byte fallback, no pre-tokenizer: merges cross words) and a Llama-2-style one that also
adds a dummy `▁` prefix (and strips it when decoding). Random walks feed every bridge random candidates (special
tokens, single byte-fallback bytes and all) and compare each candidate's RM ids with the reference.
"""

import random

import pytest
import torch
from conftest import CORPUS
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rad_q_hf.tokenizer_bridge import TokenizerBridge, incomplete_utf8_tail, reference_rm_ids, token_bytes

SPECIALS = ["<bos>", "<eos>", "<pad>"]
EXTRA = ["naïve café – 東京 🙂 déjà vu", "I can't   believe it's 2024!!", "tabs\tand\nnew lines, “quotes”"]
TEXTS = CORPUS[:6] + EXTRA


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def byte_level_bpe(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return _wrap(tok)


def sentencepiece_style(corpus: list[str], vocab_size: int, dummy_prefix: bool = False) -> PreTrainedTokenizerFast:
    """Gemma-like (spaces → `▁`, merges across words, `<0xNN>` byte fallback); with `dummy_prefix`, Llama-2-like."""
    normalizer = [normalizers.Prepend("▁")] if dummy_prefix else []
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Sequence([*normalizer, normalizers.Replace(" ", "▁")])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    alphabet = sorted({c for t in corpus for c in t.replace(" ", "▁")} | {"▁"})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=alphabet,
        show_progress=False,
        limit_alphabet=80,
    )
    trainer_tok.train_from_iterator(corpus, trainer)
    vocab = trainer_tok.get_vocab()
    for t in byte_tokens:
        vocab.setdefault(t, len(vocab))
    import json

    merges = json.loads(trainer_tok.to_str())["model"]["merges"]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) for m in merges], byte_fallback=True))
    tok.normalizer = trainer_tok.normalizer
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if dummy_prefix else []))
    tok.add_special_tokens(SPECIALS)
    return _wrap(tok)


@pytest.fixture(scope="module")
def toks() -> dict[str, PreTrainedTokenizerFast]:
    words = " ".join(CORPUS[:6]).split()
    return {
        "bpe_a": byte_level_bpe(CORPUS, 400),
        "bpe_b": byte_level_bpe([" ".join(reversed(words[i : i + 7])) for i in range(0, len(words), 3)] * 20, 330),
        "sp": sentencepiece_style(CORPUS, 140),
        "sp_prefix": sentencepiece_style(CORPUS, 200, dummy_prefix=True),
    }


PAIRS = [
    ("bpe_a", "bpe_b"),
    ("bpe_b", "bpe_a"),
    ("sp", "bpe_b"),
    ("bpe_a", "sp"),
    ("sp_prefix", "bpe_a"),
    ("sp", "sp"),
]


@pytest.mark.parametrize("name", ["bpe_a", "bpe_b", "sp", "sp_prefix"])
def test_token_bytes_decode_like_the_tokenizer(toks, name):
    tok = toks[name]
    table, strip = token_bytes(tok)
    assert strip == (name == "sp_prefix")
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        joined = b"".join(table[i] for i in ids)
        assert (joined[1:] if strip else joined).decode() == tok.decode(ids, clean_up_tokenization_spaces=False)


def test_incomplete_utf8_tail():
    for ch in "é東🙂":
        data = ch.encode()
        assert [incomplete_utf8_tail(b"ab" + data[:n]) for n in range(len(data) + 1)] == [0, *range(1, len(data)), 0]
    assert incomplete_utf8_tail(b"\x80") == 0  # a stray continuation byte is invalid, not pending


def random_walk(lm_tok, rm_tok, seed: int, steps: int = 8, k: int = 6, **bridge_kwargs):
    """Yield (candidate RM ids from the bridge, from the reference, LM ids) over a left-padded batch of 3 rows."""
    rng = random.Random(seed)
    bridge = TokenizerBridge(lm_tok, rm_tok, **bridge_kwargs)
    rows = [lm_tok.encode(rng.choice(TEXTS)[: rng.randint(0, 30)], add_special_tokens=False) for _ in range(3)]
    rows[0] = [lm_tok.bos_token_id] + rows[0]  # a special token contributes no text
    P = max(map(len, rows))
    ids = torch.tensor([[lm_tok.pad_token_id] * (P - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows])
    state = bridge.start(ids, mask)
    assert state.prefix_ids() == [reference_rm_ids(lm_tok, rm_tok, r) for r in rows]
    V = len(lm_tok)
    for _ in range(steps):
        cand = torch.tensor([rng.sample(range(V), k) for _ in rows])  # (3, k): bytes, specials, anything
        pieces = state.candidates(cand)
        assert pieces.ids.shape[:2] == pieces.rollback.shape == (3, k)
        for i, prefix in enumerate(state.prefix_ids()):
            for j, c in enumerate(cand[i].tolist()):
                got = prefix[: len(prefix) - int(pieces.rollback[i, j])] + pieces.ids[i, j][pieces.mask[i, j]].tolist()
                yield got, reference_rm_ids(lm_tok, rm_tok, rows[i] + [c]), rows[i] + [c]
        chosen = cand[torch.arange(3), torch.tensor([rng.randrange(k) for _ in rows])]
        before = state.prefix_ids()
        update = state.advance(chosen)
        rows = [r + [int(c)] for r, c in zip(rows, chosen, strict=True)]
        after = state.prefix_ids()
        assert after == [reference_rm_ids(lm_tok, rm_tok, r) for r in rows]  # the prefix is always exact
        for b, a, n, new, m in zip(before, after, update.rollback, update.ids, update.mask, strict=True):
            assert b[: len(b) - int(n)] + new[m].tolist() == a  # the update describes the change


@pytest.mark.parametrize("lm,rm", PAIRS)
def test_candidates_match_full_retokenization(toks, lm, rm):
    results = [(got, ref) for seed in range(6) for got, ref, _ in random_walk(toks[lm], toks[rm], seed)]
    assert len(results) == 6 * 8 * 3 * 6
    mismatches = [(got, ref) for got, ref in results if got != ref]
    if rm == "sp":
        # No pre-tokenizer: merges cross words and may reach further back than the re-tokenized tail (e.g. the
        # committed "wh" + tail "at" + candidate " a" is [w, h, at▁, a] where the whole text gives [what▁, a]).
        # Only that candidate's pieces differ; `advance` re-syncs the prefix (checked in random_walk).
        assert len(mismatches) <= 0.02 * len(results)
    else:
        assert not mismatches, f"{len(mismatches)} of {len(results)} candidates differ, e.g. {mismatches[:3]}"


def test_half_a_character_is_held_back_until_complete(toks):
    """A byte-fallback LM emits 東 as three tokens: the first two add no RM token, the third adds the character."""
    lm, rm = toks["sp"], toks["bpe_a"]
    state = TokenizerBridge(lm, rm).start(torch.tensor([lm.encode("the", add_special_tokens=False)]))
    vocab = lm.get_vocab()
    byte_ids = [vocab[f"<0x{b:02X}>"] for b in "東".encode()]
    seen = []
    for t in byte_ids:
        pieces = state.candidates(torch.tensor([[t]]))
        seen.append(int(pieces.n_tokens[0, 0]))
        state.advance(torch.tensor([t]))
    assert seen[:2] == [0, 0] and seen[2] >= 1
    assert state.texts() == ["the東"]
    assert state.prefix_ids()[0] == rm.encode("the東", add_special_tokens=False)


def test_leading_space_marker_becomes_the_rm_space(toks):
    """SentencePiece's `▁xyz` after "the" is " xyz" for a byte-level RM (`Ġxyz`), not "xyz" glued on."""
    lm, rm = toks["sp"], toks["bpe_a"]
    state = TokenizerBridge(lm, rm).start(torch.tensor([lm.encode("the", add_special_tokens=False)]))
    marked = [t for t in lm.get_vocab() if t.startswith("▁") and t[1:].isalpha()]
    assert marked
    for piece in marked:
        pieces = state.candidates(torch.tensor([[lm.get_vocab()[piece]]]))
        prefix = state.prefix_ids()[0]
        got = prefix[: len(prefix) - int(pieces.rollback[0, 0])] + pieces.ids[0, 0][pieces.mask[0, 0]].tolist()
        assert got == rm.encode("the " + piece[1:], add_special_tokens=False)
    # and the Llama-2-style LM's dummy prefix is dropped at the start of the text only
    lm2 = toks["sp_prefix"]
    state = TokenizerBridge(lm2, rm).start(torch.tensor([lm2.encode("the movie", add_special_tokens=False)]))
    assert state.texts() == ["the movie"]


def tiny_bpe(vocab_extra: dict[str, int], merges: list[tuple[str, str]], regex: bool = True):
    """Byte-level BPE with explicit merges; without `regex` nothing splits the text before the merges (like Gemma)."""
    alphabet = {c: i + 3 for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}  # its order varies
    vocab = (
        {"<bos>": 0, "<eos>": 1, "<pad>": 2} | alphabet | {t: len(alphabet) + 3 + i for i, t in enumerate(vocab_extra)}
    )
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=regex)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return _wrap(tok)


def test_drift_is_resynced_to_the_full_text_tokenization():
    """RM merges b+c, then a+bc. With one held-back token, "ab" commits "a"; appending "c" makes "abc" one token:
    the incremental tokenization [a, bc] drifted from encode("abc") = [abc]. Re-sync replaces the whole prefix; the
    candidate's own pieces (computed before the LM chose it) are the documented miss."""
    lm = tiny_bpe({}, [])
    rm = tiny_bpe({"bc": 0, "abc": 1}, [("b", "c"), ("a", "bc")], regex=False)
    ab, c = lm.encode("ab", add_special_tokens=False), lm.encode("c", add_special_tokens=False)
    for resync_every, expected in [(0, rm.encode("a") + rm.encode("bc")), (1, rm.encode("abc"))]:
        state = TokenizerBridge(lm, rm, hold_tokens=1, resync_every=resync_every).start(torch.tensor([ab]))
        assert state.prefix_ids() == [rm.encode("a") + rm.encode("b")]
        pieces = state.candidates(torch.tensor([c]))
        assert pieces.rollback.tolist() == [[1]]  # the window [b] → [bc]; the committed "a" is not re-read
        assert pieces.ids[0, 0][pieces.mask[0, 0]].tolist() == rm.encode("bc")
        update = state.advance(torch.tensor(c))
        assert state.prefix_ids() == [expected]
        assert update.resynced.tolist() == [bool(resync_every)]
        if resync_every:
            assert update.rollback.tolist() == [2] and update.ids[update.mask].tolist() == rm.encode("abc")


def test_a_wider_window_catches_the_merge_at_the_candidate():
    """The same merge with two held-back tokens: the candidate itself already re-reads "a"."""
    lm = tiny_bpe({}, [])
    rm = tiny_bpe({"bc": 0, "abc": 1}, [("b", "c"), ("a", "bc")], regex=False)
    state = TokenizerBridge(lm, rm, hold_tokens=2).start(torch.tensor([lm.encode("ab")]))
    pieces = state.candidates(torch.tensor([lm.encode("c")]))
    assert pieces.rollback.tolist() == [[2]] and pieces.ids[0, 0][pieces.mask[0, 0]].tolist() == rm.encode("abc")


def test_padding_or_truncation_left_on_the_rm_tokenizer_does_not_leak(toks):
    """`tokenizer(texts, padding=True)` leaves padding switched on in the shared Rust backend; the bridge's batched
    encodes used that backend and got padded ids (a later test's rewards were off by a whole β)."""
    lm, rm = toks["bpe_a"], toks["bpe_b"]
    bridge = TokenizerBridge(lm, rm)
    rm(["the", "the movie was great"], padding=True)
    rm(["the movie was great"], truncation=True, max_length=2)
    assert bridge.encode(["the", "the movie was great"]) == [rm.encode("the"), rm.encode("the movie was great")]


def test_reorder_follows_beams(toks):
    lm, rm = toks["bpe_a"], toks["bpe_b"]
    ids = torch.tensor([lm.encode("the food"), lm.encode("the movie")])
    state = TokenizerBridge(lm, rm).start(ids)
    state.reorder(torch.tensor([1, 1]))
    state.advance(torch.tensor(lm.encode(" was") * 2))
    assert state.texts() == ["the movie was"] * 2


def test_rm_tokenizer_that_adds_a_prefix_space_is_rejected(toks):
    with pytest.raises(ValueError, match="prefix space"):
        TokenizerBridge(toks["bpe_a"], toks["sp_prefix"])  # SentencePiece dummy prefix
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # RoBERTa-style
    tok.decoder = decoders.ByteLevel()
    with pytest.raises(ValueError, match="prefix space"):
        TokenizerBridge(toks["bpe_a"], PreTrainedTokenizerFast(tokenizer_object=tok))


def test_unsupported_decoder_is_rejected():
    tok = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    tok.decoder = decoders.WordPiece()
    with pytest.raises(ValueError, match="Unsupported tokenizer decoder"):
        token_bytes(PreTrainedTokenizerFast(tokenizer_object=tok))


@pytest.fixture(scope="module")
def real_pair():
    from transformers import AutoTokenizer

    from rad_q_hf.embedded import resolve

    return AutoTokenizer.from_pretrained(resolve("gemma3-270m")), AutoTokenizer.from_pretrained(
        resolve("smollm2-135m")
    )


def test_real_pair_gemma_to_smollm2_matches_full_retokenization(real_pair):
    """Gemma-3 (SentencePiece-style, 262k, byte fallback) → SmolLM2 (byte-level BPE) on real prompts + text written
    here, with random candidates from the whole Gemma vocabulary (byte tokens, specials, other scripts)."""
    gemma, smol = real_pair
    rng = random.Random(0)
    bridge = TokenizerBridge(gemma, smol)
    texts = ["She and her twin, Nikita, were found in 2001 in Ontario’s", "\"We aren't out", *EXTRA]
    checked = 0
    for text in texts:
        ids = gemma.encode(text)  # with Gemma's BOS
        state = bridge.start(torch.tensor([ids]))
        for step in range(6):
            cand = torch.tensor([rng.sample(range(len(gemma)), 12) + rng.sample(range(236000, 236800), 4)])
            pieces = state.candidates(cand)
            prefix = state.prefix_ids()[0]
            for j, c in enumerate(cand[0].tolist()):
                got = prefix[: len(prefix) - int(pieces.rollback[0, j])] + pieces.ids[0, j][pieces.mask[0, j]].tolist()
                assert got == reference_rm_ids(gemma, smol, ids + [c]), (text, step, c)
                checked += 1
            chosen = cand[:, step % 16]
            state.advance(chosen)
            ids = ids + [int(chosen)]
            assert state.prefix_ids()[0] == reference_rm_ids(gemma, smol, ids)
    assert checked == len(texts) * 6 * 16


def test_reread_counts_pieces_that_only_retokenize_the_dropped_text():
    """RM merges "\\n\\n" into one token, but "\\n\\nThe" splits as Ċ, Ċ, The (the regex keeps the last whitespace
    apart): the candidate drops `ĊĊ` and re-reads it as two pieces before its own. "b" after "a" straddles instead."""
    lm = tiny_bpe({}, [])
    rm = tiny_bpe({"ĊĊ": 0, "ab": 1}, [("Ċ", "Ċ"), ("a", "b")])
    state = TokenizerBridge(lm, rm).start(torch.tensor([lm.encode("no\n\n")]))
    assert rm.convert_ids_to_tokens(state.prefix_ids()[0]) == ["n", "o", "ĊĊ"]
    pieces = state.candidates(torch.tensor([lm.encode("T") + lm.encode("\n")]))
    assert pieces.rollback.tolist() == [[1, 0]] and pieces.reread.tolist() == [[2, 0]]
    assert rm.convert_ids_to_tokens(pieces.ids[0, 0][pieces.mask[0, 0]].tolist()) == ["Ċ", "Ċ", "T"]
    state = TokenizerBridge(lm, rm).start(torch.tensor([lm.encode("a")]))
    pieces = state.candidates(torch.tensor([lm.encode("b")]))
    assert pieces.rollback.tolist() == [[1]] and pieces.reread.tolist() == [[0]]
