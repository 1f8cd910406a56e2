"""Decoding, training and the shipped models on every available device and dtype, and across devices.

CPU cases run everywhere (CI); CUDA cases skip without a GPU (`benchmarks/gpu_check.py` runs them on one). The
ground truth is test_decoding's slow, cache-free reference run in float32 on the CPU; the fast processor runs on the
device in the dtype under test, inside `generate`, and what it returned at each step is compared with the reference
on the same inputs.
"""

import copy
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from conftest import build_reward_model
from test_decoding import Recorder, ReferenceRAD, V, prompts, setup_case, spread

from rad_q_hf import RADQ, RADV, RewardAugmentedLogitsProcessor, RewardTerm
from rad_q_hf.training import RewardRegressionTrainer, RewardTrainingConfig

# Largest |fast − reference| of a processed score z + Σβ·r (Σβ ≤ 5 here). fp32: the same sums in another order
# (seen: 3e-6). Half precision: the reward model rounds every activation to 8 (bf16) or 11 (fp16) significant bits,
# so r, of magnitude ~1 after `spread`, is off by ~1e-2 (bf16) / ~2e-3 (fp16) after two blocks and the head, times β.
# Largest errors seen on the CPU: fp16 0.015, bf16 0.10; the bounds are about 3× that.
ATOL = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 3e-1}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MODES = ["batch3_left_padded", "num_return_sequences2", "beam2", "combined"]


def on(terms, device, dtype=torch.float32):
    """Copies of the reward terms with their models moved (the originals stay the fp32 CPU reference)."""
    return [RewardTerm(copy.deepcopy(t.reward_model).to(device, dtype), t.beta, t.label, t.direction) for t in terms]


def generate_recorded(lm, ids, mask, terms, top_k, gen, device, mask_for_processor=None):
    fast = RewardAugmentedLogitsProcessor.combine(
        terms, top_k=top_k, attention_mask=(mask if mask_for_processor is None else mask_for_processor)
    )
    recorder = Recorder(fast)
    torch.manual_seed(0)
    lm.generate(ids.to(device), attention_mask=mask.to(device), logits_processor=[recorder], **gen)
    return recorder.calls


def assert_matches_reference(calls, terms, top_k, mask, prompt_len, eos, method, atol):
    reference = ReferenceRAD(terms, top_k, None, mask)
    bonus = []
    for step, (step_ids, raw, processed) in enumerate(calls):
        step_ids, raw, processed = step_ids.cpu(), raw.cpu().float(), processed.cpu().float()
        # Half-precision logits tie often, and CPU and CUDA top-k break a tie at the k-th place differently. The fast
        # path's candidates must be *a* top-k of the raw scores; the reference then scores that same set.
        chosen = processed.isfinite()  # (N, V)
        lowest_chosen = raw.masked_fill(~chosen, torch.inf).min(-1).values
        assert (lowest_chosen >= raw.masked_fill(chosen, -torch.inf).max(-1).values).all(), f"step {step}"
        nudge = chosen * 1e-3  # below any gap between distinct half-precision logits of this size: only breaks ties
        expected = reference(step_ids, raw + nudge) - nudge
        rows = slice(None)
        if method == "rad_v":  # RAD-V does not re-encode rows that finished (generate discards their scores)
            rows = ~torch.isin(step_ids[:, prompt_len:], eos).any(-1)
        torch.testing.assert_close(
            processed[rows], expected[rows], rtol=0, atol=atol, msg=lambda m, step=step: f"step {step}: {m}"
        )
        bonus.append((processed - raw)[chosen])
    assert torch.cat(bonus).std() > 0.1  # the rewards vary: not a comparison between constants


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_processor_matches_reference_on_device(method, dtype, mode, device):
    lm, ids, mask, terms, top_k, _, gen = setup_case(method, "llama", mode)
    dt = DTYPES[dtype]
    calls = generate_recorded(lm.to(device, dt), ids, mask, on(terms, device, dt), top_k, gen, device)
    assert len(calls) >= 2 and all(c[0].device.type == device for c in calls)
    eos = torch.tensor(gen["eos_token_id"]).flatten()
    assert_matches_reference(calls, terms, top_k, mask, ids.shape[1], eos, method, ATOL[dt])


CROSS = [
    pytest.param(lm_dev, rm_dev, marks=[pytest.mark.cuda, pytest.mark.skipif(not cond, reason=why)])
    for lm_dev, rm_dev, cond, why in [
        ("cuda", "cpu", torch.cuda.is_available(), "no CUDA device"),
        ("cpu", "cuda", torch.cuda.is_available(), "no CUDA device"),
        ("cuda:0", "cuda:1", torch.cuda.device_count() >= 2, "fewer than 2 GPUs"),
    ]
]


@pytest.mark.parametrize("lm_device,rm_device", CROSS)
@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_reward_model_on_another_device(method, lm_device, rm_device):
    """The LM on one device and the reward model(s) on another: the same scores as the fp32 CPU reference."""
    lm, ids, mask, terms, top_k, _, gen = setup_case(method, "llama", "combined")
    calls = generate_recorded(lm.to(lm_device), ids, mask, on(terms, rm_device), top_k, gen, lm_device)
    assert all(c[2].device == c[1].device for c in calls)  # the processed scores stay on the LM's device
    eos = torch.tensor(gen["eos_token_id"]).flatten()
    assert_matches_reference(calls, terms, top_k, mask, ids.shape[1], eos, method, ATOL[torch.float32])


@pytest.mark.parametrize("kind", ["rad_v", "rad_q"])
def test_training_step_on_device(kind, device, tmp_path):
    """The trainer's loss and gradients on the device equal the CPU's (the regulariser off: it draws random tokens)."""
    ids, mask = prompts([7, 5, 3], seed=4)
    batch = {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])}
    args = RewardTrainingConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    results = []
    for dev in ("cpu", device):
        model = spread(build_reward_model(kind, "llama", V, seed=3)).train()
        trainer = RewardRegressionTrainer(model, args)
        model.to(dev)  # after the Trainer, which moves the model to its own device
        loss = trainer.compute_loss(model, {k: v.to(dev) for k, v in batch.items()})
        loss.backward()
        grads = {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach().cpu(), grads))
    (cpu_loss, cpu_grads), (dev_loss, dev_grads) = results
    assert cpu_loss > 0.01 and cpu_grads.keys() == dev_grads.keys() and len(cpu_grads) > 5
    torch.testing.assert_close(dev_loss, cpu_loss, rtol=1e-4, atol=1e-5)
    for name, g in cpu_grads.items():
        torch.testing.assert_close(dev_grads[name], g, rtol=1e-3, atol=1e-5, msg=name)


def host_syncs(fn):
    """Run `fn` under CUDA's sync debug mode; return (its result, [(own?, where)] for each host synchronisation).

    A sync is the processor's own when it comes from rad_q_hf code and not from inside a transformers model forward
    (which the LM's own forward pays as well; on transformers 5.17 the SDPA mask check syncs once per forward).
    """
    seen = []

    def hook(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            frames = [
                f for f in traceback.extract_stack() if "/rad_q_hf/" in f.filename or "/transformers/" in f.filename
            ]
            where = " < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-4:]))
            own = any("/rad_q_hf/" in f.filename for f in frames) and not any(
                "/transformers/" in f.filename for f in frames
            )
            seen.append((own, where))

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return result, seen


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("cls,kind", [(RADQ, "rad_q"), (RADV, "rad_v")])
def test_one_host_sync_per_decoding_step(cls, kind):
    """After the prefill, the processor's own code synchronises with the host once per step (the row check),
    beam-search reorders included."""
    rm = spread(build_reward_model(kind, "llama", V, seed=1)).cuda()
    ids, mask = (t.cuda() for t in prompts([6, 3, 1]))
    proc = cls(rm, beta=3.0, top_k=5, attention_mask=mask)
    g = torch.Generator(device="cuda").manual_seed(0)
    out = proc(ids, torch.randn(len(ids), V, device="cuda", generator=g))  # the prefill (its mask check syncs)
    own, forward = [], []
    for step in range(5):
        token = out.argmax(-1, keepdim=True)  # (N, 1) a candidate of each row, chosen on the device
        order = [1, 0, 2] if step == 2 else [0, 1, 2]  # step 2 reorders the rows, as beam search does
        ids = torch.cat([ids[order], token[order]], 1)
        scores = torch.randn(len(ids), V, device="cuda", generator=g)
        out, seen = host_syncs(lambda: proc(ids, scores))  # noqa: B023
        own.append([w for is_own, w in seen if is_own])
        forward.append([w for is_own, w in seen if not is_own])
    print(f"{kind}: the processor's own syncs per step {own}; inside the reward model's forward {forward}")
    assert all(len(o) == 1 for o in own), own


@pytest.mark.parametrize("name", ["rad-q-toxicity", "rad-v-toxicity"])
def test_shipped_model_on_device(name, device):
    """A shipped model, assembled and moved to the device, scores like on the CPU."""
    pytest.importorskip("gguf", reason="assembling a shipped model needs the embedded SmolLM2 (`gguf`)")
    from transformers import AutoModel, AutoTokenizer

    import rad_q_hf
    from rad_q_hf.scoring import score_texts

    path = rad_q_hf.default_checkpoint(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = ["You are a stupid idiot.", "Thank you for the kind explanation."]
    scores = []
    for dev in ("cpu", device):
        model = AutoModel.from_pretrained(path).to(dev).eval()
        with torch.no_grad():
            scores.append(torch.tensor(score_texts(model, tokenizer, texts)))
    torch.testing.assert_close(scores[1], scores[0], rtol=0, atol=1e-4)


@pytest.mark.parametrize("method", ["rad_v", "rad_q"])
def test_lm_with_a_static_cache(method, device):
    """The processor only sees ids and scores: the LM's static cache (the one torch.compile wants) changes nothing."""
    lm, ids, mask, terms, top_k, _, gen = setup_case(method, "llama", "batch3_left_padded")
    lm, terms = lm.to(device), on(terms, device)
    outs = []
    for extra in ({}, {"cache_implementation": "static"}):
        proc = RewardAugmentedLogitsProcessor.combine(terms, top_k=top_k, attention_mask=mask)
        torch.manual_seed(0)
        outs.append(
            lm.generate(ids.to(device), attention_mask=mask.to(device), logits_processor=[proc], **gen, **extra)
        )
    assert torch.equal(outs[0], outs[1])
