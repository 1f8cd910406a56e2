"""Decode cost of RAD-Q on the LM's own trunk against unguided sampling and a separate RAD-Q reward model.

    OMP_NUM_THREADS=1 python benchmarks/trunk_decode_speed.py --batch_sizes 1 8 32 --repeats 3

Same LM (the embedded SmolLM2-135M), prompts and sampling settings as `benchmarks/decode_speed.py` (left-padded rows,
top-k 20, β 10, fixed new tokens). The methods are timed in interleaved rounds (unguided, trunk…, RAD-Q, then again),
so that load from other processes on a shared CPU hits them alike; the median of each is kept. Reward heads are
untrained: speed does not depend on them. Prints and writes ms per generated token (whole batch per step) and the
ratio to unguided.
"""

import json
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser

from rad_q_hf import RADQ, RadQForRewardModeling, RadQTrunkForRewardModeling
from rad_q_hf.decoding_trunk import RADQTrunk
from rad_q_hf.embedded import resolve

TEXT = (
    "The city council met on Tuesday evening to discuss the new budget, and after a long debate about schools, "
    "roads and the future of the public library, the members finally agreed that they would vote again next week "
    "once the auditors had published their report on last year's spending."
)


@dataclass
class Arguments:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32])
    tap_layer: int = field(default=9)
    blocks: list[int] = field(default_factory=lambda: [0, 1, 2])
    rad_q_layers: int = field(default=12, metadata={"help": "Layers of the separate RAD-Q model (shipped: 12)."})
    top_k: int = field(default=20)
    prompt_tokens: int = field(default=32)
    new_tokens: int = field(default=32)
    repeats: int = field(default=3)
    output: str = field(default="benchmarks/results/trunk_decode_speed.json")
    floors_only: bool = field(default=False, metadata={"help": "Only the per-step cost floors (robust to load)."})
    floor_repeats: int = field(default=30)


@torch.no_grad()
def floors(lm, trunks, rad_q, ids, mask, args) -> dict:
    """Per-step cost floors at the prompt's context, 1 + t_extra / t_LM, from single one-token steps timed in
    interleaved rounds (median): the LM's cached step on B rows; the trunk scorer's extra work on the same rows
    (norm, own blocks with their cache, gathering k rows of E); a separate RAD-Q model's cached step plus its head."""
    from rad_q_hf.compat import cache_kwarg, output_cache

    B = ids.shape[0]
    step_mask = torch.cat([mask, mask.new_ones(B, 1)], 1)
    new = ids[:, -1:]
    cand = torch.randint(lm.config.vocab_size, (B, args.top_k))
    lm_cache = output_cache(lm(ids, attention_mask=mask, use_cache=True))
    lm_layer = trunks[next(iter(trunks))].tap_module
    states = {}
    lm_layer.register_forward_hook(lambda m, a, o: states.__setitem__("h", o[0] if isinstance(o, tuple) else o))

    def lm_step():
        lm(new, attention_mask=step_mask, use_cache=True, **{cache_kwarg(lm): lm_cache})
        lm_cache.crop(-1)

    def trunk_step(rm):
        tapped = rm.run_top(torch.zeros(B, ids.shape[1], lm.config.hidden_size), mask, use_cache=True)
        cache = tapped[1]

        def run():
            g, c = rm.run_top(states["h"][:, -1:], step_mask, cache=cache, use_cache=True)
            rm.score_hidden(g[:, -1], cand, label=0)
            if c is not None:
                c.crop(-1)

        return run

    rq_cache = rad_q.encode(ids, mask, use_cache=True)[1]

    def rad_q_step():
        h, _ = rad_q.encode(new, step_mask, cache=rq_cache, use_cache=True)
        rad_q.score_hidden(h[:, -1], cand, label=0)
        rq_cache.crop(-1)

    lm_step()
    fns = {"lm": lm_step, **{f"trunk_b{n}": trunk_step(rm) for n, rm in trunks.items()}, "rad_q": rad_q_step}
    times = {name: [] for name in fns}
    for _ in range(args.floor_repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    t_lm = statistics.median(times["lm"])
    return {name: 1 + statistics.median(t) / t_lm for name, t in times.items() if name != "lm"} | {
        "lm_step_ms": 1000 * t_lm
    }


def make_prompts(tokenizer, batch, length):
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    ids = (ids * (length // len(ids) + 1))[:length]
    tokenizer.padding_side = "left"
    enc = tokenizer.pad({"input_ids": [ids[i % 4 :] for i in range(batch)]}, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def time_generate(lm, ids, mask, args, factory, eos_id) -> float:
    processors = [factory()] if factory else []
    torch.manual_seed(0)
    t0 = time.perf_counter()
    out = lm.generate(
        ids, attention_mask=mask, do_sample=True, top_k=args.top_k if not processors else 0, temperature=1.0,
        top_p=1.0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, logits_processor=processors,
        pad_token_id=eos_id, eos_token_id=eos_id,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    for p in processors:
        getattr(p, "close", lambda: None)()  # the trunk processor's hook
    assert out.shape[1] == ids.shape[1] + args.new_tokens
    return 1000 * elapsed / args.new_tokens


@torch.no_grad()
def main(args: Arguments) -> dict:
    torch.set_num_threads(1)
    path = resolve("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    trunks = {
        n: RadQTrunkForRewardModeling.from_lm(lm, tap_layer=args.tap_layer, num_blocks=n).eval() for n in args.blocks
    }
    rad_q = RadQForRewardModeling.from_backbone(str(path), num_layers=args.rad_q_layers).eval()
    results = {}
    for B in args.batch_sizes:
        ids, mask = make_prompts(tokenizer, B, args.prompt_tokens)
        if args.floors_only:
            results[B] = floors(lm, trunks, rad_q, ids, mask, args)
            print(f"B={B:3d} floors", json.dumps(results[B]), flush=True)
            continue
        methods = {"unguided": None}
        for n, rm in trunks.items():
            methods[f"trunk_L{args.tap_layer}_b{n}"] = partial(
                RADQTrunk, rm, beta=10.0, top_k=args.top_k, attention_mask=mask
            )
        methods[f"rad_q_{args.rad_q_layers}L"] = partial(RADQ, rad_q, beta=10.0, top_k=args.top_k, attention_mask=mask)
        time_generate(lm, ids, mask, args, None, tokenizer.eos_token_id)  # warm-up
        times = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, factory in methods.items():
                times[name].append(time_generate(lm, ids, mask, args, factory, tokenizer.eos_token_id))
        base = statistics.median(times["unguided"])
        results[B] = {
            name: {"ms_per_token": statistics.median(t), "ratio": statistics.median(t) / base, "runs_ms": t}
            for name, t in times.items()
        }
        for name, r in results[B].items():
            print(f"B={B:3d} {name:18s} {r['ms_per_token']:8.1f} ms/token  {r['ratio']:.3f}x", flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": vars(args), "results": results}, indent=2) + "\n")
    return results


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(Arguments).parse_args_into_dataclasses()
    main(arguments)
