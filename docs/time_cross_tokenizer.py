"""CPU timing of cross-tokenizer steering: Gemma-3-270M steered by the shipped SmolLM2 toxicity models.

`PYTHONPATH=. OMP_NUM_THREADS=1 python docs/time_cross_tokenizer.py` (docs/cross_tokenizer.md). ms per generated
token, unguided vs RAD-Q vs RAD-V (k = 20), and the share of that time spent in the tokenizer bridge (Python).
"""

import time

import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

from rad_q_hf import RewardAugmentedLogitsProcessor, RewardTerm, default_checkpoint
from rad_q_hf.embedded import resolve
from rad_q_hf.tokenizer_bridge import BridgeState

NEW = 10
tok = AutoTokenizer.from_pretrained(resolve("gemma3-270m"), padding_side="left")
lm = AutoModelForCausalLM.from_pretrained(resolve("gemma3-270m")).eval()
rms = {m: AutoModel.from_pretrained(default_checkpoint(f"{m}-toxicity")).eval() for m in ("rad-q", "rad-v")}
bridge_s = [0.0]
for name in ("candidates", "advance"):  # time spent in the bridge
    f = getattr(BridgeState, name)

    def timed(self, *a, _f=f):
        t0 = time.perf_counter()
        out = _f(self, *a)
        bridge_s[0] += time.perf_counter() - t0
        return out

    setattr(BridgeState, name, timed)

prompts = [
    "I think that you",
    "She and her twin, Nikita, were found in 2001 in",
    "The food was",
    "God never intended to",
]
for B in (1, 8):
    batch = tok((prompts * 2)[:B], return_tensors="pt", padding=True)
    for method in ("unguided", "rad-q", "rad-v"):
        procs = []
        if method != "unguided":
            term = RewardTerm(rms[method], 10.0, 0, "minimize")
            procs = [RewardAugmentedLogitsProcessor.combine([term], 20, None, batch["attention_mask"], tok)]
        torch.manual_seed(0)
        bridge_s[0] = 0.0
        t0 = time.perf_counter()
        lm.generate(**batch, do_sample=True, top_k=20 if not procs else 0, max_new_tokens=NEW, min_new_tokens=NEW,
                    logits_processor=procs, pad_token_id=tok.pad_token_id)  # fmt: skip
        ms = 1000 * (time.perf_counter() - t0) / NEW
        print(f"B={B} {method:8s} {ms:8.1f} ms/token   bridge {1000 * bridge_s[0] / NEW:6.1f} ms/token", flush=True)
