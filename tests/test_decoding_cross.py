"""Cross-tokenizer RAD-V and RAD-Q (issue 14) against a slow reference that goes through text at every step.

The reference decodes the full LM text (prompt + generated + candidate), re-tokenizes it with the reward model's
tokenizer and scores it without a cache: RAD-V the value of the whole sequence; RAD-Q (as defined in
`decoding_cross.py`) the reward of the candidate's first new RM token after the RM prefix it keeps, or, for a
candidate that adds no RM token, the reward of the current text's last RM token. The LM (random tiny GPT-2) and the
reward models use tiny tokenizers that disagree on purpose (SentencePiece-style with byte fallback vs byte-level BPE,
two byte-level BPEs with different merges).
"""

import pytest
import torch
from conftest import build_reward_model, gpt2_config
from test_decoding import Recorder, ReferenceProcessor, spread
from test_tokenizer_bridge import CORPUS, byte_level_bpe, sentencepiece_style
from transformers import AutoModelForCausalLM

from rad_q_hf import RADQ, RewardAugmentedLogitsProcessor, RewardTerm
from rad_q_hf.decoding_cross import CrossRadQScorer, CrossRadVScorer
from rad_q_hf.tokenizer_bridge import common_prefix_len, reference_rm_ids, token_bytes

MODES = ["batch3_left_padded", "num_return_sequences2", "beam2", "combined", "eos_early"]
PROMPTS = ["the movie was", "you are a kind", "naïve café 東京"]


@pytest.fixture(scope="module")
def tokenizers():
    words = " ".join(CORPUS[:6]).split()
    rm_tok = byte_level_bpe([" ".join(reversed(words[i : i + 7])) for i in range(0, len(words), 3)] * 20, 330)
    return {"sp": sentencepiece_style(CORPUS, 140), "bpe": byte_level_bpe(CORPUS, 400), "rm": rm_tok}


class ReferenceCross(ReferenceProcessor):
    """Every reward recomputed from the re-tokenized full text (no top-p: the cross path needs top-k)."""

    def __init__(self, terms, top_k, lm_tok, prompt_mask):
        super().__init__(terms, top_k, None, prompt_mask)
        self.lm_tok = lm_tok

    def reward(self, term, label, real, cand):
        return torch.stack([self.reward_of(term, label, real.tolist(), int(c)) for c in cand])

    def reward_of(self, term, label, real, c):
        rm, rm_tok = term.reward_model, term.tokenizer
        prefix = reference_rm_ids(self.lm_tok, rm_tok, real)
        full = reference_rm_ids(self.lm_tok, rm_tok, real + [c])
        if rm.config.model_type == "rad_v":
            return rm(torch.tensor([full]), use_cache=False).rewards[0, -1, label]
        bos = [rm.config.bos_token_id]
        keep = common_prefix_len(prefix, full)
        table, _ = token_bytes(rm_tok)
        dropped = sum(len(table[t]) for t in prefix[keep:])
        ends = [sum(len(table[t]) for t in full[keep : keep + s]) for s in range(1, len(full) - keep)]
        if dropped and dropped in ends:  # pieces that re-read the dropped text exactly: the next one, on the prefix
            own = full[keep + ends.index(dropped) + 1]
            return rm(torch.tensor([bos + prefix]), use_cache=False).rewards[0, -1, label, own]
        if len(full) > keep:  # the first RM token the candidate adds, after the prefix tokens it keeps
            return rm(torch.tensor([bos + full[:keep]]), use_cache=False).rewards[0, -1, label, full[keep]]
        if not full:  # no text yet: the head's baseline at BOS
            return rm._baselines(rm.encode(torch.tensor([bos]))[0][0, -1])[label]
        return rm(torch.tensor([bos + full[:-1]]), use_cache=False).rewards[0, -1, label, full[-1]]  # text's reward


def setup_case(method, lm_name, mode, tokenizers):
    lm_tok, rm_tok = tokenizers[lm_name], tokenizers["rm"]
    torch.manual_seed(123)
    lm = AutoModelForCausalLM.from_config(gpt2_config(len(lm_tok))).eval()
    rm = spread(build_reward_model(method, "gpt2", len(rm_tok), seed=1))
    terms = [RewardTerm(rm, 3.0, 0, "maximize", rm_tok)]
    if mode == "combined":
        other = "rad_q" if method == "rad_v" else "rad_q_no_baseline"
        terms.append(
            RewardTerm(spread(build_reward_model(other, "gpt2", len(rm_tok), seed=2)), 2.0, "b", "minimize", rm_tok)
        )
    lm_tok.padding_side = "left"
    batch = lm_tok(
        PROMPTS[:2] if mode in ("num_return_sequences2", "beam2") else PROMPTS, return_tensors="pt", padding=True
    )
    gen = dict(
        do_sample=True, max_new_tokens=6, pad_token_id=lm_tok.pad_token_id, eos_token_id=lm_tok.eos_token_id, top_k=0
    )
    if mode == "num_return_sequences2":
        gen["num_return_sequences"] = 2
    if mode == "beam2":
        gen.update(do_sample=False, num_beams=2)
    if mode == "empty_prompt":  # a row with no text yet (only BOS): RAD-Q's zero-token candidates get the baseline
        batch = lm_tok(["<bos>", "the movie was"], return_tensors="pt", padding=True)
    if mode == "eos_early":  # finished rows then get pad tokens, outside their candidates (RAD-V's correction path)
        gen.update(eos_token_id=list(range(3, len(lm_tok), 3)), max_new_tokens=10)
    return lm, lm_tok, terms, batch, gen


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("lm_name", ["sp", "bpe"])
@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_cross_tokenizer_matches_text_reference(method, lm_name, mode, tokenizers):
    lm, lm_tok, terms, batch, gen = setup_case(method, lm_name, mode, tokenizers)
    mask = batch["attention_mask"]
    fast = RewardAugmentedLogitsProcessor.combine(terms, top_k=5, attention_mask=mask, tokenizer=lm_tok)
    expected_type = CrossRadVScorer if method == "rad_v" else CrossRadQScorer
    assert isinstance(fast.scorers[0], expected_type) and fast.vocab_size is None
    recorder = Recorder(fast)
    torch.manual_seed(0)
    lm.generate(**batch, logits_processor=[recorder], **gen)
    reference = ReferenceCross(terms, 5, lm_tok, mask)
    bonus = []
    for step, (ids, raw, processed) in enumerate(recorder.calls):
        torch.testing.assert_close(processed, reference(ids, raw), rtol=1e-4, atol=1e-4, msg=f"step {step}")
        bonus.append((processed - raw)[processed.isfinite()])
    assert torch.cat(bonus).std() > 0.1  # the rewards vary: not a comparison between constants


@pytest.mark.parametrize("lm_name", ["sp", "bpe"])
def test_cross_rad_v_feeds_all_candidates_one_token_wide(lm_name, tokenizers):
    """The forward over the N·k candidate rows takes one column; only the longer candidates' rows (a copy) take more.
    (Padding every candidate to the longest one made that forward 3-7× wider on Gemma-3 → SmolLM2.)"""
    lm, lm_tok, terms, batch, gen = setup_case("rad_v", lm_name, "batch3_left_padded", tokenizers)
    fast = RewardAugmentedLogitsProcessor.combine(
        terms, top_k=5, attention_mask=batch["attention_mask"], tokenizer=lm_tok
    )
    scorer, rm = fast.scorers[0], terms[0].reward_model
    widths, multi, encode = [], [], rm.encode

    def spy(ids, *args, **kwargs):
        widths.append(tuple(ids.shape))
        return encode(ids, *args, **kwargs)

    score = scorer._score

    def count(cand):
        out = score(cand)
        multi.append(int((scorer.pieces.n_tokens > 1).sum()))
        return out

    rm.encode, scorer._score = spy, count
    try:
        torch.manual_seed(0)
        lm.generate(**batch, logits_processor=[fast], **gen)
    finally:
        del rm.encode
    N, k = len(batch["input_ids"]), 5
    assert sum(multi) > 0  # the case has multi-token candidates
    assert all(w == 1 for rows, w in widths if rows == N * k)
    assert sum(rows < N * k and rows != N for rows, _ in widths) == sum(m > 0 for m in multi)


@pytest.mark.parametrize("lm_name", ["sp", "bpe"])
def test_cross_rad_q_from_an_empty_text(lm_name, tokenizers):
    test_cross_tokenizer_matches_text_reference("rad_q", lm_name, "empty_prompt", tokenizers)


def test_cross_rad_v_needs_prompt_text(tokenizers):
    lm, lm_tok, terms, batch, gen = setup_case("rad_v", "sp", "empty_prompt", tokenizers)
    proc = RewardAugmentedLogitsProcessor.combine(
        terms, top_k=5, attention_mask=batch["attention_mask"], tokenizer=lm_tok
    )
    with pytest.raises(ValueError, match="prompt text in every row"):
        lm.generate(**batch, logits_processor=[proc], **gen)


def test_cross_rad_q_rolling_back_past_the_kept_states(tokenizers, monkeypatch):
    """With 1 kept hidden state, candidates that re-tokenize the prefix (and the text's own reward, which needs the
    state before the last token) take the re-encoding fallback."""
    monkeypatch.setattr(CrossRadQScorer, "window", 1)
    test_cross_tokenizer_matches_text_reference("rad_q", "sp", "batch3_left_padded", tokenizers)


def test_same_tokenizer_keeps_the_shared_path(tokenizers):
    """Given the reward model's own tokenizer equal to the LM's, nothing goes through text."""
    tok = tokenizers["rm"]
    rm = build_reward_model("rad_q", "gpt2", len(tok))
    proc = RewardAugmentedLogitsProcessor.combine([RewardTerm(rm, 1.0, 0, "maximize", tok)], top_k=5, tokenizer=tok)
    assert type(proc.scorers[0]).__name__ == "_RadQScorer" and proc.vocab_size == len(tok)


def test_saved_reward_tokenizer_selects_the_cross_path(tokenizers, tmp_path):
    lm_tok, rm_tok = tokenizers["sp"], tokenizers["rm"]
    rm = build_reward_model("rad_q", "gpt2", len(rm_tok))
    rm.save_pretrained(tmp_path)
    rm_tok.save_pretrained(tmp_path)
    loaded = type(rm).from_pretrained(tmp_path)
    assert isinstance(RADQ(loaded, top_k=5, tokenizer=lm_tok).scorers[0], CrossRadQScorer)
    with pytest.raises(ValueError, match="top_k"):
        RADQ(loaded, top_k=None, top_p=0.9, tokenizer=lm_tok)


def test_custom_generate_compares_saved_tokenizers_of_equal_size(tokenizers, tmp_path):
    """An LM and a reward model with the same vocabulary size but their own tokenizers (other ids, as Llama-2 and
    Mistral at 32,000): custom_generate reads both saved tokenizers and goes through text, as the explicit processor
    given the LM's tokenizer does. Equal sizes were taken for one shared vocabulary (rewards of other tokens)."""
    from rad_q_hf import reward_augmented_generate

    lm_tok, rm_tok = tokenizers["bpe"], tokenizers["rm"]
    size = max(len(lm_tok), len(rm_tok))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(gpt2_config(size)).save_pretrained(tmp_path / "lm")
    lm_tok.save_pretrained(tmp_path / "lm")
    build_reward_model("rad_q", "gpt2", size).save_pretrained(tmp_path / "rm")
    rm_tok.save_pretrained(tmp_path / "rm")
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    rm = spread(type(build_reward_model("rad_q", "gpt2", 8)).from_pretrained(tmp_path / "rm").eval())
    batch = lm_tok(["the movie was"], return_tensors="pt")
    gen = dict(do_sample=True, max_new_tokens=4, pad_token_id=0)
    explicit = RADQ(rm, top_k=5, attention_mask=batch["attention_mask"], tokenizer=lm_tok)
    assert isinstance(explicit.scorers[0], CrossRadQScorer)
    torch.manual_seed(0)
    expected = lm.generate(**batch, logits_processor=[explicit], **gen)
    torch.manual_seed(0)
    got = lm.generate(**batch, custom_generate=reward_augmented_generate, reward_model=rm, top_k=5, **gen)
    assert torch.equal(got, expected)


def test_gemma3_steered_by_the_shipped_smollm2_reward_models():
    """The real pair end to end: Gemma-3-270M with the shipped RAD-Q and RAD-V toxicity models, whose checkpoints
    carry the SmolLM2 tokenizer (the processor picks the cross path by itself), against the text reference."""
    from transformers import AutoModel, AutoTokenizer

    from rad_q_hf import default_checkpoint
    from rad_q_hf.embedded import resolve

    lm_tok = AutoTokenizer.from_pretrained(resolve("gemma3-270m"))
    lm = AutoModelForCausalLM.from_pretrained(resolve("gemma3-270m")).eval()
    terms = []
    for name, label_dir in [("rad-q-toxicity", "minimize"), ("rad-v-toxicity", "minimize")]:
        path = default_checkpoint(name)
        terms.append(RewardTerm(AutoModel.from_pretrained(path).eval(), 10.0, 0, label_dir))
    lm_tok.padding_side = "left"
    batch = lm_tok(["I think that you", "The café in 東京 was"], return_tensors="pt", padding=True)
    proc = RewardAugmentedLogitsProcessor.combine(
        terms, top_k=5, attention_mask=batch["attention_mask"], tokenizer=lm_tok
    )
    assert [type(s) for s in proc.scorers] == [CrossRadQScorer, CrossRadVScorer]
    recorder = Recorder(proc)
    torch.manual_seed(0)
    lm.generate(**batch, logits_processor=[recorder], do_sample=True, top_k=0, max_new_tokens=3, min_new_tokens=3)
    smol = proc.scorers[0].bridge.rm_tokenizer
    reference = ReferenceCross(
        [RewardTerm(t.reward_model, t.beta, t.label, t.direction, smol) for t in terms],
        5,
        lm_tok,
        batch["attention_mask"],
    )
    for ids, raw, processed in recorder.calls:
        torch.testing.assert_close(processed, reference(ids, raw), rtol=1e-4, atol=1e-4)
    # The mask-free route (here with the RAD-V model, by path) reads the LM's saved tokenizer (the vocabulary sizes
    # differ) and takes the same path.
    import rad_q_hf

    out = lm.generate(**batch, custom_generate=rad_q_hf.reward_augmented_generate, reward_model=path, top_k=5,
                      direction="minimize", do_sample=True, max_new_tokens=2, min_new_tokens=2)  # fmt: skip
    assert out.shape == (2, batch["input_ids"].shape[1] + 2)


@pytest.mark.parametrize("mode", ["batch3_left_padded", "beam2", "eos_early"])
@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_cross_tokenizer_on_device(method, mode, device, tokenizers):
    """LM and reward models on the device (fp32), the text reference on the CPU."""
    import copy

    lm, lm_tok, terms, batch, gen = setup_case(method, "sp", mode, tokenizers)
    moved = [
        RewardTerm(copy.deepcopy(t.reward_model).to(device), t.beta, t.label, t.direction, t.tokenizer) for t in terms
    ]
    fast = RewardAugmentedLogitsProcessor.combine(
        moved, top_k=5, attention_mask=batch["attention_mask"], tokenizer=lm_tok
    )
    recorder = Recorder(fast)
    torch.manual_seed(0)
    lm.to(device).generate(**batch.to(device), logits_processor=[recorder], **gen)
    reference = ReferenceCross(terms, 5, lm_tok, batch["attention_mask"].cpu())
    for step, (ids, raw, processed) in enumerate(recorder.calls):
        expected = reference(ids.cpu(), raw.cpu())
        torch.testing.assert_close(processed.cpu(), expected, rtol=1e-4, atol=1e-4, msg=f"step {step}")


def test_cross_rad_q_after_a_paragraph_break_scores_the_words():
    """After "\\n\\n" (one RM token) every word candidate re-tokenizes it as Ċ, Ċ + word. RAD-Q scores the word on
    the whole prefix, so the candidates get different rewards (scoring their first piece `Ċ` made them all equal)."""
    from test_tokenizer_bridge import tiny_bpe

    lm_tok, rm_tok = tiny_bpe({}, []), tiny_bpe({"ĊĊ": 0}, [("Ċ", "Ċ")])
    rm = spread(build_reward_model("rad_q", "gpt2", len(rm_tok), seed=1))
    term = RewardTerm(rm, 3.0, 0, "maximize", rm_tok)
    ids = torch.tensor([lm_tok.encode("no\n\n")])
    proc = RewardAugmentedLogitsProcessor.combine([term], top_k=5, tokenizer=lm_tok)
    scores = torch.zeros(1, len(lm_tok))
    scores[0, [lm_tok.convert_tokens_to_ids(c) for c in "Thexy"]] = 1.0  # the top-5: five letters
    out = proc(ids, scores)
    torch.testing.assert_close(out, ReferenceCross([term], 5, lm_tok, torch.ones_like(ids))(ids, scores))
    cand = scores.topk(5).indices
    raw = (
        RewardAugmentedLogitsProcessor.combine([term], top_k=5, tokenizer=lm_tok)
        .scorers[0]
        .prefill(ids, torch.ones_like(ids), cand)
    )  # (1, 5) before the clamp to [0, 1]
    assert raw.unique().numel() == 5


def test_shared_and_cross_terms_combined(tokenizers):
    """One reward model shares the LM's tokenizer (scored on the LM ids), the other reads another one (through text)."""
    from test_decoding import ReferenceRAD

    lm_tok = tokenizers["rm"]  # the LM uses the first reward model's tokenizer
    other_tok = tokenizers["bpe"]
    torch.manual_seed(123)
    lm = AutoModelForCausalLM.from_config(gpt2_config(len(lm_tok))).eval()
    shared = RewardTerm(spread(build_reward_model("rad_q", "gpt2", len(lm_tok), seed=1)), 3.0, 0, "maximize", lm_tok)
    cross = RewardTerm(
        spread(build_reward_model("rad_v", "gpt2", len(other_tok), seed=2)), 2.0, 0, "minimize", other_tok
    )
    lm_tok.padding_side = "left"
    batch = lm_tok(PROMPTS, return_tensors="pt", padding=True)
    mask = batch["attention_mask"]
    proc = RewardAugmentedLogitsProcessor.combine([shared, cross], top_k=5, attention_mask=mask, tokenizer=lm_tok)
    assert [type(s).__name__ for s in proc.scorers] == ["_RadQScorer", "CrossRadVScorer"]
    recorder = Recorder(proc)
    torch.manual_seed(0)
    lm.generate(**batch, logits_processor=[recorder], do_sample=True, top_k=0, max_new_tokens=5, pad_token_id=2)
    for ids, raw, processed in recorder.calls:
        by_ids = ReferenceRAD([shared], 5, None, mask)(ids, raw)
        through_text = ReferenceCross([cross], 5, lm_tok, mask)(ids, raw) - raw
        torch.testing.assert_close(processed, by_ids + through_text, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_reward_model_left_in_train_mode_is_scored_in_eval_mode(method, tokenizers):
    """Dropout off while scoring (rewards must not depend on the RNG); the model's own mode is given back."""
    lm, lm_tok, terms, batch, gen = setup_case(method, "sp", "batch3_left_padded", tokenizers)
    rm = terms[0].reward_model
    for m in rm.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    outs = []
    for train in (False, True):
        rm.train(train)
        proc = RewardAugmentedLogitsProcessor.combine(terms, 5, None, batch["attention_mask"], lm_tok)
        recorder = Recorder(proc)
        torch.manual_seed(0)
        lm.generate(**batch, logits_processor=[recorder], **gen)
        assert rm.training == train
        outs.append(torch.cat([processed for _, _, processed in recorder.calls]))
    torch.testing.assert_close(outs[0], outs[1])
