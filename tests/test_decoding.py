"""The reward-augmented logits processor against a slow reference, in every `generate` mode.

The reference recomputes each candidate's reward from the full token sequence (real tokens only, one row at a time,
no cache) — obviously correct and slow. A recorder wraps the fast processor inside `generate` and keeps what it was
given and what it returned at every step (also under beam search, where rows are reordered between steps); the
reference then processes the same inputs and the outputs must agree within 1e-4.
"""

import math

import pytest
import torch
from conftest import BACKBONES, build_reward_model
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, LogitsProcessor, PreTrainedTokenizerFast, TextStreamer

from rad_q_hf import RADQ, RADV, RewardAugmentedLogitsProcessor, RewardTerm

V = 120
PAD, BOS = 2, 0
MODES = ["batch1", "batch3_left_padded", "num_return_sequences2", "beam2", "eos_early", "top_p", "combined"]


def spread(rm):
    """Scale the random head so clamped rewards fall inside (0, 1) often, not only at the clamp bounds."""
    with torch.no_grad():
        for name, p in rm.named_parameters():
            if name.startswith(("value_head", "reward_head", "baseline_head")):
                p.mul_(25.0)
        if hasattr(rm, "value_head"):
            rm.value_head.bias.fill_(0.5)
    return rm


def build_lm(backbone):
    torch.manual_seed(123)
    return AutoModelForCausalLM.from_config(BACKBONES[backbone](V)).eval()


def prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.full((len(lengths), T), PAD)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, T - n :] = torch.randint(3, V, (n,), generator=g)
        mask[i, T - n :] = 1
    return ids, mask


class Recorder(LogitsProcessor):
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, input_ids, scores):
        out = self.inner(input_ids, scores)
        self.calls.append((input_ids.clone(), scores.clone(), out.clone()))
        return out


def real_tokens_mask(prompt_mask, N, P):
    """(N, P) bool: the real tokens of `generate`'s rows (prompts repeated per sample/beam, then new tokens)."""
    m = prompt_mask.repeat_interleave(N // len(prompt_mask), 0)
    return torch.cat([m, torch.ones(N, P - m.shape[1], dtype=m.dtype)], 1).bool()


def record_processor_calls(monkeypatch) -> list:
    """Every RAD processor call's (input_ids, scores, output), also for processors built inside `generate`."""
    calls, call = [], RewardAugmentedLogitsProcessor.__call__

    def recording(self, input_ids, scores):
        out = call(self, input_ids, scores)
        calls.append((input_ids.clone(), scores.clone(), out.clone()))
        return out

    monkeypatch.setattr(RewardAugmentedLogitsProcessor, "__call__", recording)
    return calls


class ReferenceProcessor:
    """z_v + Σ β·clamp(r_v) on the candidates (top-k, then top-p), −inf elsewhere; `reward` recomputes each term's
    rewards from scratch on the row's real tokens (the subclasses: shared vocabulary, LM trunk, through text)."""

    def __init__(self, terms, top_k, top_p, prompt_mask):
        self.terms, self.top_k, self.top_p, self.prompt_mask = terms, top_k, top_p, prompt_mask

    @torch.no_grad()
    def __call__(self, input_ids, scores):
        N, P = input_ids.shape
        mask = real_tokens_mask(self.prompt_mask, N, P)
        out = torch.full_like(scores, -math.inf)
        for i in range(N):
            real = input_ids[i][mask[i]]  # the row's tokens without padding
            cand = scores[i].topk(self.top_k).indices if self.top_k else torch.arange(scores.shape[-1])
            z = scores[i, cand]
            keep = torch.ones_like(cand, dtype=torch.bool)
            if self.top_p is not None:
                probs = z.softmax(-1)
                order = probs.argsort(descending=True)
                mass_before = probs[order].cumsum(0) - probs[order]
                keep[order] = mass_before < self.top_p
            total = z.clone()
            for term in self.terms:
                r = self.reward(term, term.reward_model.config.label_index(term.label), real, cand).clamp(0, 1)
                total += term.beta * (1 - r if term.direction == "minimize" else r)
            out[i, cand[keep]] = total[keep]
        return out

    def reward(self, term, label, real, cand):
        """(k,) rewards of the candidates `cand` after the real tokens `real` (1-D tensors)."""
        raise NotImplementedError


class ReferenceRAD(ReferenceProcessor):
    """Shared vocabulary: RAD-V scores each full sequence, RAD-Q reads the full-vocabulary head after BOS ⊕ prefix."""

    def reward(self, term, label, real, cand):
        rm = term.reward_model
        if rm.config.model_type == "rad_v":  # r(prefix ⊕ v): score each full sequence
            seqs = torch.cat([real.repeat(len(cand), 1), cand[:, None]], 1)
            return rm(seqs, use_cache=False).rewards[:, -1, label]
        seq = torch.cat([torch.tensor([BOS]), real])[None]  # r(BOS ⊕ prefix, v) from the full-vocabulary head
        return rm(seq, use_cache=False).rewards[0, -1, label, cand]


def setup_case(method, backbone, mode):
    """(lm, prompt ids, prompt mask, terms, top_k, top_p, generate kwargs) for one cell of the matrix."""
    lm = build_lm(backbone)
    kind = "rad_v" if method == "rad_v" else "rad_q"
    terms = [RewardTerm(spread(build_reward_model(kind, backbone, V, seed=1)), beta=3.0, label=0)]
    top_k, top_p = 5, None
    lengths = {"batch1": [5]}.get(mode, [6, 3, 1])
    gen = dict(do_sample=True, max_new_tokens=6, pad_token_id=PAD, eos_token_id=1, top_k=0)
    if mode == "num_return_sequences2":
        lengths = [5, 2]
        gen["num_return_sequences"] = 2
    elif mode == "beam2":
        lengths = [5, 2]
        gen.update(do_sample=False, num_beams=2)
    elif mode == "eos_early":
        gen["eos_token_id"] = list(range(3, V, 3))  # a third of the vocabulary ends a row
        gen["max_new_tokens"] = 10
    elif mode == "top_p":
        top_p = 0.8
        top_k = None if method == "rad_q" else 5  # RAD-Q over the whole vocabulary; RAD-V within its top-k
    elif mode == "combined":
        other = "rad_q_no_baseline" if method == "rad_q" else "rad_q"  # RAD-V is combined with a RAD-Q term
        terms.append(RewardTerm(spread(build_reward_model(other, backbone, V, seed=2)), 2.0, "b", "minimize"))
    ids, mask = prompts(lengths)
    return lm, ids, mask, terms, top_k, top_p, gen


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_processor_matches_slow_reference(method, backbone, mode):
    lm, ids, mask, terms, top_k, top_p, gen = setup_case(method, backbone, mode)
    fast = RewardAugmentedLogitsProcessor.combine(terms, top_k=top_k, top_p=top_p, attention_mask=mask)
    recorder = Recorder(fast)
    torch.manual_seed(0)
    out = lm.generate(
        ids, attention_mask=mask, logits_processor=[recorder], return_dict_in_generate=True, output_scores=True, **gen
    )
    assert len(recorder.calls) == len(out.scores) >= 2
    reference = ReferenceRAD(terms, top_k, top_p, mask)
    spread_seen = []
    eos = torch.tensor(gen["eos_token_id"]).flatten()
    for step, (step_ids, raw, processed) in enumerate(recorder.calls):
        expected = reference(step_ids, raw)
        rows = slice(None)
        if method == "rad_v":
            # RAD-V does not re-encode rows that already finished (generate discards their scores): skip them.
            rows = ~torch.isin(step_ids[:, ids.shape[1] :], eos).any(-1)
        torch.testing.assert_close(processed[rows], expected[rows], rtol=1e-4, atol=1e-4, msg=f"step {step}")
        finite = processed.isfinite()
        spread_seen.append((processed - raw)[finite])
        if top_k:
            assert int(finite.sum(-1).max()) <= top_k
    bonus = torch.cat(spread_seen)
    assert bonus.std() > 0.1  # the rewards actually vary: the comparison is not between constants
    if mode == "eos_early":  # some rows really finished before others
        finished = (out.sequences[:, ids.shape[1] :] == PAD).any(-1)
        assert finished.any() and not finished.all()


@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_sampled_tokens_lie_in_top_k(method, backbone):
    lm, ids, mask, terms, top_k, _, gen = setup_case(method, backbone, "batch3_left_padded")
    recorder = Recorder(RewardAugmentedLogitsProcessor.combine(terms, top_k=top_k, attention_mask=mask))
    torch.manual_seed(1)
    seqs = lm.generate(ids, attention_mask=mask, logits_processor=[recorder], **gen)
    P = ids.shape[1]
    for step, (_, raw, _) in enumerate(recorder.calls):
        chosen = seqs[:, P + step]
        assert (raw.topk(top_k).indices == chosen[:, None]).any(-1).all()


@pytest.mark.parametrize("cls,kind", [(RADQ, "rad_q"), (RADV, "rad_v")])
def test_beta_zero_equals_plain_top_k_sampling(cls, kind, backbone):
    lm = build_lm(backbone)
    ids, mask = prompts([6, 3, 4])
    gen = dict(do_sample=True, max_new_tokens=8, pad_token_id=PAD, eos_token_id=1)
    torch.manual_seed(7)
    plain = lm.generate(ids, attention_mask=mask, top_k=5, **gen)
    rm = build_reward_model(kind, backbone, V)
    torch.manual_seed(7)
    guided = lm.generate(
        ids, attention_mask=mask, top_k=0, logits_processor=[cls(rm, 0.0, 5, attention_mask=mask)], **gen
    )
    assert torch.equal(plain, guided)


@pytest.mark.parametrize("kind", ["rad_q", "rad_v"])
def test_reusing_a_processor_rebuilds_its_state(kind, tokenizer):
    lm, rm = build_lm("gpt2"), spread(build_reward_model(kind, "gpt2", V, seed=1))
    ids1, mask1 = prompts([5, 2], seed=1)
    ids2, mask2 = prompts([3, 6], seed=2)
    gen = dict(do_sample=True, max_new_tokens=5, pad_token_id=PAD, eos_token_id=1, top_k=0)
    proc = RewardAugmentedLogitsProcessor(rm, beta=5.0, top_k=5, attention_mask=mask1, tokenizer=tokenizer)

    def run(p, ids, mask):
        torch.manual_seed(3)
        return lm.generate(ids, attention_mask=mask, logits_processor=[p], **gen)

    first = run(proc, ids1, mask1)
    assert torch.equal(run(proc, ids1, mask1), first)  # same prompts again: no reset needed
    with pytest.raises(ValueError, match="reset"):
        run(proc, ids2, mask2)  # the stored mask is not these prompts' mask
    proc.reset(attention_mask=mask2)
    fresh = RewardAugmentedLogitsProcessor(rm, beta=5.0, top_k=5, attention_mask=mask2)
    assert torch.equal(run(proc, ids2, mask2), run(fresh, ids2, mask2))


def test_streamer_and_bf16(tokenizer, capsys):
    lm = build_lm("llama")
    rm = build_reward_model("rad_q", "llama", V).to(torch.bfloat16)
    batch = tokenizer(["the movie was"], return_tensors="pt")
    out = lm.generate(
        **batch,
        do_sample=True,
        max_new_tokens=4,
        pad_token_id=PAD,
        streamer=TextStreamer(tokenizer),
        logits_processor=[RADQ(rm, 10.0, 5, attention_mask=batch["attention_mask"], tokenizer=tokenizer)],
    )
    assert out.shape == (1, batch["input_ids"].shape[1] + 4)
    assert capsys.readouterr().out.startswith("the movie was")


def test_construction_errors_are_clear(tokenizer):
    rm_q = build_reward_model("rad_q", "gpt2", V, labels=("toxicity",))
    rm_v = build_reward_model("rad_v", "gpt2", V, labels=("toxicity",))
    with pytest.raises(TypeError, match=r"RADQ needs a rad_q reward model.*use RADV"):
        RADQ(rm_v)
    with pytest.raises(TypeError, match=r"RADV needs a rad_v reward model"):
        RADV(rm_q)
    with pytest.raises(ValueError, match="finite"):
        RADQ(rm_q, beta=float("inf"))
    with pytest.raises(ValueError, match="top_k"):
        RADQ(rm_q, top_k=0)
    with pytest.raises(ValueError, match="Unknown label 'sentiment'"):
        RADQ(rm_q, label="sentiment")
    with pytest.raises(ValueError, match="direction"):
        RADQ(rm_q, direction="down")
    with pytest.raises(ValueError, match="RAD-V scores a fixed number"):
        RADV(rm_v, top_k=None, top_p=0.9)
    small = build_reward_model("rad_q", "gpt2", 50)
    with pytest.raises(ValueError, match="do not share a vocabulary"):
        RADQ(small, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="share one tokenizer"):
        RADQ(small, top_k=5)(torch.ones(1, 3, dtype=torch.long), torch.zeros(1, V))
    with pytest.raises(ValueError, match="beyond its context of 128"):
        RADV(rm_v, top_k=3)(torch.ones(1, 128, dtype=torch.long), torch.zeros(1, V))


def test_tokenizer_with_a_different_id_map_is_rejected(tokenizer, tmp_path):
    """Same size, two ids swapped: the reward model's saved tokenizer betrays the mismatch."""
    rm = build_reward_model("rad_q", "gpt2", V)
    rm.save_pretrained(tmp_path)
    vocab = dict(tokenizer.get_vocab())
    a, b = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in ("<bos>", "<eos>", "<pad>")][:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    other = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    PreTrainedTokenizerFast(tokenizer_object=other, pad_token="<pad>").save_pretrained(tmp_path)
    loaded = type(rm).from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="different ids"):
        RADQ(loaded, tokenizer=tokenizer)
    tokenizer.save_pretrained(tmp_path)  # the matching tokenizer passes
    RADQ(loaded, tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------------------------------
# never silently wrong on the explicit path


def generate_with(lm, ids, proc, mask=None, **kw):
    gen = dict(do_sample=True, max_new_tokens=3, pad_token_id=PAD, eos_token_id=1, top_k=0) | kw
    torch.manual_seed(0)
    return lm.generate(ids, attention_mask=mask, logits_processor=[proc], **gen)


@pytest.mark.parametrize("kind", ["rad_q", "rad_v"])
def test_left_padded_batch_without_mask_is_refused(kind):
    lm, rm = build_lm("gpt2"), build_reward_model(kind, "gpt2", V)
    ids, mask = prompts([6, 3, 1])
    with pytest.raises(ValueError, match=r"left-padded.*custom_generate=rad_q_hf.reward_augmented_generate"):
        generate_with(lm, ids, RewardAugmentedLogitsProcessor(rm, top_k=5), mask)  # no tokenizer: the RM's pad id
    # Every row starting once with a BOS that is also the pad id is not padding.
    same = torch.cat([torch.full((3, 1), PAD), prompts([4, 4, 4])[0]], 1)
    generate_with(lm, same, RewardAugmentedLogitsProcessor(rm, top_k=5))


def test_mask_of_another_shape_is_refused():
    lm, rm = build_lm("gpt2"), build_reward_model("rad_q", "gpt2", V)
    ids, mask = prompts([6, 3, 1])
    with pytest.raises(ValueError, match="does not fit"):  # was padded with ones (scoring the pads as text)
        generate_with(lm, ids, RADQ(rm, top_k=5, attention_mask=mask[:, 2:]), mask)


def test_right_padded_prompts_are_refused():
    lm, rm = build_lm("gpt2"), build_reward_model("rad_q", "gpt2", V)
    ids, mask = prompts([6, 3, 1])
    ids, mask = ids.flip(1), mask.flip(1)  # the same rows, right-padded
    with pytest.raises(ValueError, match="padding_side='left'"):
        generate_with(lm, ids, RADQ(rm, top_k=5, attention_mask=mask), mask)


@pytest.mark.parametrize("pad_id", [PAD, None])
def test_stale_mask_is_caught_without_a_tokenizer(pad_id):
    lm, rm = build_lm("gpt2"), build_reward_model("rad_q", "gpt2", V)
    rm.config.pad_token_id = rm.config.eos_token_id = pad_id  # None: only the mask itself tells
    ids1, mask1 = prompts([5, 2], seed=1)
    ids2, mask2 = prompts([2, 5], seed=2)
    proc = RADQ(rm, top_k=5, attention_mask=mask1)
    generate_with(lm, ids1, proc, mask1)
    with pytest.raises(ValueError, match="reset"):
        generate_with(lm, ids2, proc, mask2)
    # A right mask whose pads use an id no config names (a tokenizer's own pad) is not stale.
    generate_with(lm, ids2.masked_fill(mask2 == 0, 99), RADQ(rm, top_k=5, attention_mask=mask2), mask2)
    if pad_id is not None:  # an all-ones mask kept from an unpadded batch has no pad position to compare
        ids3, mask3 = prompts([4, 4], seed=3)
        proc = RADQ(rm, top_k=5, attention_mask=mask3)
        generate_with(lm, ids3, proc, mask3)
        with pytest.raises(ValueError, match="reset"):
            generate_with(lm, prompts([4, 2], seed=5)[0], proc, prompts([4, 2], seed=5)[1])


@pytest.mark.parametrize("kind", ["rad_q", "rad_v"])
def test_a_bos_the_lm_tokenizer_put_first_is_hidden_from_the_reward_model(kind):
    """Reward models are trained on text without special tokens (RAD-Q puts BOS first itself). Prompts that a
    Llama-style tokenizer starts with BOS must be rewarded as the bare prompts are, at the prefill and after, left
    padding included."""
    rm = build_reward_model(kind, "gpt2", V)
    ids, mask = prompts([5, 3, 4], seed=4)
    with_bos, with_bos_mask = (
        torch.full((3, ids.shape[1] + 1), PAD),
        torch.zeros(3, ids.shape[1] + 1, dtype=mask.dtype),
    )
    for i in range(3):  # BOS, then the row's real tokens, left-padded one column wider
        real = torch.cat([torch.tensor([BOS]), ids[i][mask[i] == 1]])
        with_bos[i, -len(real) :], with_bos_mask[i, -len(real) :] = real, 1
    assert (with_bos_mask.sum(1) == mask.sum(1) + 1).all()
    g = torch.Generator().manual_seed(0)
    steps = [torch.randn(3, V, generator=g) for _ in range(3)]
    outs = []
    for x, m in ((ids, mask), (with_bos, with_bos_mask)):
        proc, got = RewardAugmentedLogitsProcessor(rm, beta=5.0, top_k=6, attention_mask=m), []
        for t, scores in enumerate(steps):
            got.append(proc(x, scores.clone()))
            x = torch.cat([x, torch.full((3, 1), 7 + t)], 1)
        outs.append(torch.stack(got))
    torch.testing.assert_close(outs[1], outs[0])
    # Without the hiding, the BOS-led prompts would be rewarded differently: the test can tell the two apart.
    inner = RewardAugmentedLogitsProcessor(rm, beta=5.0, top_k=6, attention_mask=with_bos_mask)
    inner._hidden_bos = None
    assert not torch.allclose(inner(with_bos, steps[0].clone()), outs[0][0])


@pytest.mark.parametrize("kind", ["rad_q", "rad_v"])
@pytest.mark.parametrize("do_sample", [True, False])
def test_non_finite_rewards_are_refused(kind, do_sample):
    """A reward model that returns NaN (e.g. fp16 overflow): clamp keeps NaN, and greedy search's argmax would pick
    such a candidate without a word."""
    lm, rm = build_lm("gpt2"), build_reward_model(kind, "gpt2", V)
    with torch.no_grad():
        head = rm.reward_head if kind == "rad_q" else rm.value_head
        head.weight[0, 0] = math.nan
    ids, mask = prompts([6, 3, 1])
    with pytest.raises(ValueError, match="non-finite rewards .* bfloat16 or float32"):
        generate_with(lm, ids, RewardAugmentedLogitsProcessor(rm, top_k=5, attention_mask=mask), mask,
                      do_sample=do_sample)  # fmt: skip


@pytest.mark.parametrize("kind", ["rad_q", "rad_v"])
def test_reward_models_mode_is_left_alone(kind):
    """Scored in eval mode (dropout off), but the user's model keeps the mode it had, module by module."""
    lm = build_lm("gpt2")
    ids, mask = prompts([6, 3, 1])
    rm = build_reward_model(kind, "gpt2", V)
    rm.config.backbone_config.resid_pdrop = 0.5
    noisy = type(rm)(rm.config).eval()
    noisy.load_state_dict(rm.state_dict())
    for m in noisy.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    expected = generate_with(lm, ids, RewardAugmentedLogitsProcessor(noisy, top_k=5, attention_mask=mask), mask)
    noisy.train()
    noisy.backbone.h[0].eval()  # a mixed state must survive too
    modes = [m.training for m in noisy.modules()]
    got = generate_with(lm, ids, RewardAugmentedLogitsProcessor(noisy, top_k=5, attention_mask=mask), mask)
    assert [m.training for m in noisy.modules()] == modes
    assert torch.equal(got, expected)  # dropout was off while scoring


@pytest.mark.parametrize("lm_vocab,rm_vocab", [(128, V), (V, 136)])
def test_vocabularies_padded_to_different_sizes(tokenizer, lm_vocab, rm_vocab):
    """Pythia-style: one tokenizer (120 tokens), embedding matrices of 128 / 136 rows."""
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(BACKBONES["gpt2"](lm_vocab)).eval()
    rm = spread(build_reward_model("rad_q", "gpt2", rm_vocab, seed=1))
    ids, mask = prompts([6, 3, 1])
    with pytest.raises(ValueError, match="pass the LM's `tokenizer=`"):
        generate_with(lm, ids, RADQ(rm, top_k=5, attention_mask=mask), mask)
    recorder = Recorder(RADQ(rm, beta=3.0, top_k=5, attention_mask=mask, tokenizer=tokenizer))
    out = generate_with(lm, ids, recorder, mask, max_new_tokens=5)
    assert int(out.max()) < len(tokenizer)
    reference = ReferenceRAD([RewardTerm(rm, 3.0)], 5, None, mask)
    for step_ids, raw, processed in recorder.calls:
        n = len(tokenizer)
        assert not processed[:, n:].isfinite().any()  # padding rows of the LM never become candidates
        torch.testing.assert_close(processed[:, :n], reference(step_ids, raw[:, :n])[:, :n], rtol=1e-4, atol=1e-4)


def test_rad_v_top_k_is_capped_and_oversized_caches_are_refused(monkeypatch):
    import rad_q_hf.decoding as decoding

    rm = build_reward_model("rad_v", "gpt2", V)
    assert RADV(rm, top_k=10**6).top_k == V
    monkeypatch.setattr(decoding, "_free_memory", lambda device: 10_000)
    monkeypatch.setattr(type(rm), "encode", lambda *a, **k: pytest.fail("no forward before the size check"))
    with pytest.raises(ValueError, match=r"1200 cache rows .* lower `top_k`"):
        RADV(rm, top_k=10**6)(torch.full((10, 4), 5), torch.zeros(10, V))
