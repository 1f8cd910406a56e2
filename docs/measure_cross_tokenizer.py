"""Measure how Gemma-3-270M's top-k candidates map onto SmolLM2 tokens on real prompts (docs/cross_tokenizer.md).

Run from the repository root: `PYTHONPATH=. OMP_NUM_THREADS=1 python docs/measure_cross_tokenizer.py [n_prompts] [new_tokens]`.
Each prompt is continued by top-k sampling (k = 20, T = 1, seed 0, no reward); at every step the 20 candidates go
through the bridge and are compared with the slow reference (re-tokenize the whole text).
"""

import collections
import gzip
import json
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rad_q_hf.embedded import resolve
from rad_q_hf.tokenizer_bridge import TokenizerBridge, reference_rm_ids

n_prompts = int(sys.argv[1]) if len(sys.argv) > 1 else 20
new_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 20
K = 20
torch.manual_seed(0)
lm_tok = AutoTokenizer.from_pretrained(resolve("gemma3-270m"))
rm_tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
lm = AutoModelForCausalLM.from_pretrained(resolve("gemma3-270m")).eval()
bridge = TokenizerBridge(lm_tok, rm_tok)
folder = Path("rad_q_hf/prompts")
prompts = []
for name in ("rtp-nontoxic", "sentiment-neutral"):
    with gzip.open(folder / f"{name}.jsonl.gz", "rt") as f:
        prompts += [json.loads(line)["text"] for _, line in zip(range(n_prompts // 2), f, strict=False)]

n_tok = collections.Counter()
kinds = collections.Counter()  # (RM tokens, LM piece) of candidates that are not one RM token
chosen_n = collections.Counter()  # RM tokens the sampled LM token added
rollback = reread = resync = mismatch = total = steps = chosen_rollback = 0
bridge_s = 0.0
for prompt in prompts:
    ids = lm_tok(prompt, return_tensors="pt").input_ids  # with Gemma's BOS (a special token: no text)
    t0 = time.perf_counter()
    state = bridge.start(ids)
    bridge_s += time.perf_counter() - t0
    past = None
    seq = ids[0].tolist()
    inp = ids
    for _ in range(new_tokens):
        with torch.no_grad():
            out = lm(inp, past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
        top = logits.topk(K)
        t0 = time.perf_counter()
        pieces = state.candidates(top.indices[None])  # (1, K, S)
        bridge_s += time.perf_counter() - t0
        pre = state.prefix_ids()[0]
        for j, c in enumerate(top.indices.tolist()):
            got = pre[: len(pre) - int(pieces.rollback[0, j])] + pieces.ids[0, j][pieces.mask[0, j]].tolist()
            mismatch += got != reference_rm_ids(lm_tok, rm_tok, seq + [c])
        n_tok.update(pieces.n_tokens[0].tolist())
        for j, c in enumerate(top.indices.tolist()):  # what the multi- and zero-token candidates are
            if int(pieces.n_tokens[0, j]) != 1:
                kinds[(int(pieces.n_tokens[0, j]), lm_tok.convert_ids_to_tokens(c))] += 1
        rollback += int((pieces.rollback > 0).sum())
        reread += int((pieces.reread > 0).sum())
        total += K
        choice = top.indices[torch.multinomial(top.values.softmax(-1), 1)]
        t0 = time.perf_counter()
        upd = state.advance(choice)
        bridge_s += time.perf_counter() - t0
        resync += int(upd.resynced.sum())
        chosen_n.update([int(upd.mask.sum())])
        chosen_rollback += int(upd.rollback.sum() > 0)
        seq.append(int(choice))
        steps += 1
        inp = choice[None]
        if int(choice) == lm_tok.eos_token_id:
            break
    print(repr(lm_tok.decode(seq, skip_special_tokens=True)), flush=True)

print(f"prompts {len(prompts)}, steps {steps}, candidates {total}")
for n in sorted(n_tok):
    print(f"  {n} RM tokens: {n_tok[n]} ({100 * n_tok[n] / total:.2f} %)")
print(f"  rollback > 0 (candidate re-tokenizes the prefix's last tokens): {rollback} ({100 * rollback / total:.2f} %)")
print(
    f"  of which the leading pieces only re-read the dropped text (RAD-Q skips them): {reread} ({100 * reread / total:.2f} %)"
)
print(f"  differs from re-tokenizing the whole text: {mismatch} ({100 * mismatch / total:.3f} %)")
print("sampled tokens: " + ", ".join(f"{n} RM tokens {100 * c / steps:.2f} %" for n, c in sorted(chosen_n.items())))
print(f"  sampled tokens that re-tokenize the prefix's last tokens: {100 * chosen_rollback / steps:.2f} %")
print(f"  re-syncs after advance: {resync} of {steps} steps")
print("most common non-single candidates (RM tokens, Gemma piece):", kinds.most_common(15))
print(f"  bridge time: {1000 * bridge_s / steps:.2f} ms per step (one row, k = {K})")
