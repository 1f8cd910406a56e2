"""Decoding speed of RAD-Q and RAD-V against unguided sampling and against their own cost floors.

    python benchmarks/decode_speed.py                      # embedded SmolLM2-135M as LM, its first 6 layers as RM
    python benchmarks/decode_speed.py --device cuda --batch_sizes 1 8 32 --naive_batch_sizes 1 8 32
    python benchmarks/decode_speed.py --lm gemma3-270m --name cross   # another tokenizer: scored through text
    python benchmarks/decode_speed.py --lm benchmarks/configs/gemma3-270m.json --lm_tokenizer DIR \
        --reward_backbone benchmarks/configs/smollm2-135m.json --reward_tokenizer DIR --reward_layers 12  # the same,
        # random weights (a GPU without the GGUF; random text has more multi-token candidates than real text)
    python benchmarks/decode_speed.py --reward_layers 12 --trunk_blocks 0 1   # + RAD-Q on the LM's own trunk
    python benchmarks/decode_speed.py --device cuda --dtype bfloat16 --lm benchmarks/configs/llama-3.1-8b.json \
        --reward_backbone benchmarks/configs/smollm2-135m.json --reward_layers 30   # random weights, real shapes

One run measures, on the same LM and prompts: unguided top-k sampling, RAD-Q, RAD-V (batched, cached) and a naive
RAD-V that re-encodes every candidate sequence without a cache (one batched call per step). It prints ms per
generated token (per step, whole batch), the ratio of each to unguided, peak memory, and two floors measured in the
same run from single cached forwards at mid-generation context:
    RAD-Q floor = 1 + t_RM(B rows) / t_LM(B rows)        RAD-V floor = 1 + t_RM(B·k rows) / t_LM(B rows)
`--trunk_blocks` adds RAD-Q on the LM's own trunk (issue 15: the LM's layer-`--trunk_tap_layer` states through a hook,
then that many own blocks and the head; floor = 1 + t_blocks(B rows) / t_LM(B rows)).
Writes JSON and a markdown table to --output_dir. Reward heads are untrained: speed does not depend on them.

`--lm` / `--reward_backbone` may also be a config JSON (`benchmarks/configs/`): the model is then built with random
weights directly on the device, and the prompts are random token ids (no tokenizer, no download). A reward backbone
whose vocabulary differs from the LM's is given the LM's vocabulary size (RAD needs one vocabulary; the cost of the
extra embedding rows is a gather, not a matmul).
"""

import copy
import json
import math
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import psutil
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, LogitsProcessor

from rad_q_hf import (
    RadQConfig,
    RadQForRewardModeling,
    RadQTrunkForRewardModeling,
    RadVConfig,
    RadVForRewardModeling,
    RewardAugmentedLogitsProcessor,
    RewardTerm,
)
from rad_q_hf.compat import cache_kwarg, output_cache
from rad_q_hf.decoding_trunk import RADQTrunk
from rad_q_hf.embedded import is_embedded, resolve

TEXT = (
    "The city council met on Tuesday evening to discuss the new budget, and after a long debate about schools, "
    "roads and the future of the public library, the members finally agreed that they would vote again next week "
    "once the auditors had published their report on last year's spending."
)


@dataclass
class BenchmarkArguments:
    lm: str = field(default="smollm2-135m", metadata={"help": "LM: an embedded name, a local folder or a Hub id."})
    reward_backbone: str = field(default="smollm2-135m", metadata={"help": "Backbone of the reward models."})
    reward_layers: int = field(default=6, metadata={"help": "Keep the reward backbone's first N layers."})
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8, 32], metadata={"help": "Batch sizes to time."})
    naive_batch_sizes: list[int] = field(
        default_factory=lambda: [1], metadata={"help": "Batch sizes for the (slow) naive RAD-V; others are skipped."}
    )
    top_k: int = field(default=20, metadata={"help": "Candidates per step (k)."})
    prompt_tokens: int = field(default=32, metadata={"help": "Prompt length in tokens (a few rows 1-3 shorter)."})
    new_tokens: int = field(default=64, metadata={"help": "Tokens generated per row."})
    repeats: int = field(
        default=1, metadata={"help": "Rounds of timed generate calls, every method once per round (medians kept)."}
    )
    device: str = field(default="cpu", metadata={"help": "cpu or cuda."})
    reward_device: str | None = field(
        default=None, metadata={"help": "Device of the reward models (default: --device); e.g. cpu beside a cuda LM."}
    )
    warmup: bool = field(
        default=False, metadata={"help": "A short generate call per method before timing it (kernel autotuning)."}
    )
    name: str = field(default="", metadata={"help": "Suffix of the output files (decode_speed_<device>[_<name>])."})
    dtype: str = field(default="float32", metadata={"help": "float32 or bfloat16."})
    trunk_blocks: list[int] = field(
        default_factory=list, metadata={"help": "Also time RAD-Q on the LM's own trunk with these own-block counts."}
    )
    trunk_tap_layer: int = field(
        default=9, metadata={"help": "The trunk models' tap layer (cost does not depend on it)."}
    )
    lm_tokenizer: str | None = field(
        default=None, metadata={"help": "A tokenizer folder for a config-JSON LM: real prompts instead of random ids."}
    )
    reward_tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "A tokenizer folder for a config-JSON reward backbone, which then keeps its own vocabulary: with "
            "--lm_tokenizer, the cross-tokenizer path on random weights (e.g. on a GPU without the GGUF)."
        },
    )
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where JSON and markdown go."})


class NaiveRADV(LogitsProcessor):
    """RAD-V without a cache: every step re-encodes prompt + generated tokens + candidate for all B·k rows."""

    def __init__(self, reward_model, beta, top_k, attention_mask):
        self.rm, self.beta, self.k, self.prompt_mask = reward_model, beta, top_k, attention_mask

    @torch.no_grad()
    def __call__(self, input_ids, scores):
        N, P = input_ids.shape
        top, cand = scores.topk(self.k, dim=-1)  # (N, k)
        mask = torch.cat([self.prompt_mask, self.prompt_mask.new_ones(N, P + 1 - self.prompt_mask.shape[1])], 1)
        seqs = torch.cat([input_ids.repeat_interleave(self.k, 0), cand.reshape(-1, 1)], 1)  # (N·k, P+1)
        mask = mask.repeat_interleave(self.k, 0)
        hidden, _ = self.rm.encode(seqs.to(self.rm.device), mask.to(self.rm.device), use_cache=False)
        r = self.rm.score_hidden(hidden[:, -1], label=0).view(N, self.k).float().clamp(0, 1).to(scores.device)
        return torch.full_like(scores, -math.inf).scatter(-1, cand, top + self.beta * r)


class PeakMemory:
    """Peak of CUDA allocations, or of process RSS sampled every 5 ms on the CPU, above the level at entry."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.proc, self.base, self.peak, self.stop = psutil.Process(), psutil.Process().memory_info().rss, 0, False
            self.thread = threading.Thread(target=self._poll, daemon=True)
            self.thread.start()
        return self

    def _poll(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.stop = True
            self.thread.join()
            self.mib = max(self.peak - self.base, 0) / 2**20


def sync(device=None):
    if torch.cuda.is_available():  # the LM or a reward model may be on the GPU whatever `device` says
        torch.cuda.synchronize()


def make_prompts(tokenizer, batch, length, device):
    ids = tokenizer(TEXT, add_special_tokens=False).input_ids
    ids = (ids * (length // len(ids) + 1))[:length]
    rows = [ids[i % 4 :] for i in range(batch)]  # lengths L, L-1, L-2, L-3: exercises left padding
    tokenizer.padding_side = "left"
    enc = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def random_prompts(vocab_size, batch, length, device, pad_id):
    """Random token ids, rows of lengths L, L-1, L-2, L-3 left-padded with `pad_id` (random weights need no text)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, min(vocab_size, 32000), (batch, length), generator=g)
    mask = torch.ones_like(ids)
    for i in range(batch):
        ids[i, : i % 4], mask[i, : i % 4] = pad_id, 0
    return ids.to(device), mask.to(device)


def close(processors) -> None:
    """A trunk model's hook on the LM must not outlive its run (the naive baseline has nothing to close)."""
    for processor in processors:
        getattr(processor, "close", lambda: None)()


def time_generate(lm, ids, mask, args, processor_factory, eos_id, warmup: bool = False):
    """ms per generated token of one timed generate call, and its peak memory."""
    if warmup:  # first calls of new shapes pay for cuBLAS/kernel selection: not part of decoding cost
        processors = [processor_factory()] if processor_factory else []
        run_generate(lm, ids, mask, args, processors, eos_id, min(4, args.new_tokens))
        close(processors)
    # Built outside the timed region: a one-off set-up (the cross-tokenizer path reads both vocabularies).
    processors = [processor_factory()] if processor_factory else []
    with PeakMemory(args.device) as mem:
        sync(args.device)
        t0 = time.perf_counter()
        out = run_generate(lm, ids, mask, args, processors, eos_id, args.new_tokens)
        sync(args.device)
        seconds = time.perf_counter() - t0
    close(processors)
    assert out.shape[1] == ids.shape[1] + args.new_tokens
    return 1000 * seconds / args.new_tokens, mem.mib


def time_methods(lm, ids, mask, args, methods: dict, eos_id) -> dict[str, tuple[float, float]]:
    """{name: (median ms per token, peak MiB)} over `args.repeats` rounds; each round times every method once, so
    that load drift on a shared machine hits all of them alike (and the ratios stay comparable)."""
    times, mems = {name: [] for name in methods}, {name: 0.0 for name in methods}
    for r in range(args.repeats):
        for name, factory in methods.items():
            ms, mib = time_generate(lm, ids, mask, args, factory, eos_id, warmup=args.warmup and r == 0)
            times[name].append(ms)
            mems[name] = max(mems[name], mib)
    return {name: (statistics.median(times[name]), mems[name]) for name in methods}


def run_generate(lm, ids, mask, args, processors, eos_id, new_tokens):
    torch.manual_seed(0)
    return lm.generate(
        ids,
        attention_mask=mask,
        do_sample=True,
        top_k=args.top_k if not processors else 0,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        logits_processor=processors,
        pad_token_id=eos_id,
        eos_token_id=eos_id,
    )


@torch.no_grad()
def time_forward(model, ids, mask, device, repeats=5, embeddings=False):
    """Median time of one cached forward of one new token per row, after a prefill of `ids` (`embeddings`: the model
    is fed random `inputs_embeds` of the same shape instead, as a trunk model's blocks are)."""
    ids, mask = ids.to(model.device), mask.to(model.device)
    inputs = {"input_ids": ids}
    if embeddings:
        inputs = {
            "inputs_embeds": torch.randn(*ids.shape, model.config.hidden_size, dtype=model.dtype, device=model.device)
        }
    out = model(**inputs, attention_mask=mask, use_cache=True)
    cache = output_cache(out)
    step = {name: value[:, -1:] for name, value in inputs.items()}
    mask = torch.cat([mask, mask[:, -1:]], 1)
    times = []
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        model(**step, attention_mask=mask, use_cache=True, **{cache_kwarg(model): cache})
        sync(device)
        times.append(time.perf_counter() - t0)
        cache.crop(-1)  # drop the token just added, so every repeat sees the same context
    return 1000 * statistics.median(times[1:])


def is_config_file(name: str) -> bool:
    return name.endswith(".json")


def build_models(args: BenchmarkArguments):
    """(lm, rad_q, rad_v, LM tokenizer or None, reward tokenizer or None): pretrained weights, or random ones from
    config JSONs on the device."""
    dtype = getattr(torch, args.dtype)
    rm_device = args.reward_device or args.device
    if is_config_file(args.lm):
        config = AutoConfig.from_pretrained(args.lm)
        tokenizer = AutoTokenizer.from_pretrained(args.lm_tokenizer) if args.lm_tokenizer else None
        if tokenizer is not None:  # random weights sample any id: only ids the tokenizer can spell
            config.vocab_size = min(config.vocab_size, len(tokenizer))
        with torch.device(args.device):  # initialise on the device: an 8B model would take minutes on the CPU
            lm = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        lm_path = resolve(args.lm) if is_embedded(args.lm) else args.lm
        tokenizer = AutoTokenizer.from_pretrained(lm_path)
        lm = AutoModelForCausalLM.from_pretrained(lm_path, dtype=dtype).to(args.device)
    if is_config_file(args.reward_backbone):
        backbone = AutoConfig.from_pretrained(args.reward_backbone)
        if not args.reward_tokenizer:
            backbone.vocab_size = lm.config.vocab_size
        models = []
        for config_cls, model_cls in ((RadQConfig, RadQForRewardModeling), (RadVConfig, RadVForRewardModeling)):
            with torch.device(rm_device):
                config = config_cls(backbone_config=copy.deepcopy(backbone), num_layers=args.reward_layers)
                models.append(model_cls(config).to(dtype))
        rad_q, rad_v = models
    else:
        rm_path = resolve(args.reward_backbone) if is_embedded(args.reward_backbone) else args.reward_backbone
        rad_q = RadQForRewardModeling.from_backbone(rm_path, num_layers=args.reward_layers, dtype=dtype)
        rad_v = RadVForRewardModeling.from_backbone(rm_path, num_layers=args.reward_layers, dtype=dtype)
    rm_tokenizer = AutoTokenizer.from_pretrained(args.reward_tokenizer) if args.reward_tokenizer else None
    return lm.eval(), rad_q.to(rm_device).eval(), rad_v.to(rm_device).eval(), tokenizer, rm_tokenizer


def trunk_model(lm, args: BenchmarkArguments, num_blocks: int) -> RadQTrunkForRewardModeling:
    """RAD-Q on `lm`'s own trunk; its top's blocks are fed `inputs_embeds` (a 1-token vocabulary), so the floor is
    timed on the blocks alone through `trunk.top` with embeddings of the context's length."""
    if lm.config.vocab_size != lm.get_input_embeddings().weight.shape[0]:
        raise ValueError("The trunk rows need the LM's own vocabulary.")
    trunk = RadQTrunkForRewardModeling.from_lm(lm, tap_layer=args.trunk_tap_layer, num_blocks=num_blocks)
    return trunk.to(getattr(torch, args.dtype)).eval()


def is_cross(lm, rad_q, tokenizer, rm_tokenizer) -> bool:
    """Whether the LM has another vocabulary than the reward models (e.g. Gemma-3 steered by SmolLM2 ones): the
    processor then goes through text and needs the LM's tokenizer."""
    if rm_tokenizer is not None:
        return tokenizer is not None and rm_tokenizer.get_vocab() != tokenizer.get_vocab()
    return tokenizer is not None and lm.config.vocab_size != rad_q.config.vocab_size


def eos_of(lm, tokenizer) -> int:
    eos_id = lm.config.eos_token_id if tokenizer is None else tokenizer.eos_token_id
    return eos_id[0] if isinstance(eos_id, list) else eos_id


def batch_prompts(lm, tokenizer, B: int, args: BenchmarkArguments, eos_id: int):
    """(ids, mask) of B left-padded prompts: the tokenizer's real text, or random ids for random weights."""
    if tokenizer is None:
        return random_prompts(lm.config.vocab_size, B, args.prompt_tokens, args.device, pad_id=eos_id)
    return make_prompts(tokenizer, B, args.prompt_tokens, args.device)


def guided_methods(rad_q, rad_v, mask, args: BenchmarkArguments, tokenizer, rm_tokenizer, cross: bool) -> dict:
    """{"rad_q"|"rad_v" [+ "_cross"]: processor factory}, β = 10. The same-tokenizer case passes no LM tokenizer,
    so its timing includes no tokenizer check."""
    methods = {}
    for name, rm in (("rad_q", rad_q), ("rad_v", rad_v)):
        # A random reward model has no saved tokenizer: --reward_tokenizer's goes into its term.
        term = RewardTerm(rm, 10.0, 0, "maximize", rm_tokenizer)
        methods[name + ("_cross" if cross else "")] = partial(
            RewardAugmentedLogitsProcessor.combine, [term], args.top_k, None, mask, tokenizer if cross else None
        )
    return methods


def main(args: BenchmarkArguments) -> list[dict]:
    torch.set_grad_enabled(False)
    lm, rad_q, rad_v, tokenizer, rm_tokenizer = build_models(args)
    trunks = {n: trunk_model(lm, args, n) for n in args.trunk_blocks}
    cross = is_cross(lm, rad_q, tokenizer, rm_tokenizer)  # once: Gemma's get_vocab() has 262k entries
    suffix = "_cross" if cross else ""
    eos_id = eos_of(lm, tokenizer)
    rows = []
    for B in args.batch_sizes:
        ids, mask = batch_prompts(lm, tokenizer, B, args, eos_id)
        # Floors at mid-generation context (prompt + half the new tokens), from single cached forwards.
        ctx_ids = torch.cat([ids, ids[:, -args.new_tokens // 2 :]], 1)
        ctx_mask = torch.cat([mask, torch.ones_like(ids[:, -args.new_tokens // 2 :])], 1)
        t_lm = time_forward(lm, ctx_ids, ctx_mask, args.device)
        rm_ids = ctx_ids % rad_q.config.vocab_size  # ids of another vocabulary: same length, valid rows (timing only)
        t_rm_b = time_forward(rad_q.backbone, rm_ids, ctx_mask, args.device)
        k = args.top_k
        t_rm_bk = time_forward(
            rad_v.backbone, rm_ids.repeat_interleave(k, 0), ctx_mask.repeat_interleave(k, 0), args.device
        )
        floors = {"rad_q" + suffix: 1 + t_rm_b / t_lm, "rad_v" + suffix: 1 + t_rm_bk / t_lm}
        methods = {"unguided": None} | guided_methods(rad_q, rad_v, mask, args, tokenizer, rm_tokenizer, cross)
        if B in args.naive_batch_sizes and not cross:
            methods["rad_v_naive"] = partial(NaiveRADV, rad_v, 10.0, k, mask)
        for n, trunk in trunks.items():
            methods[f"rad_q_trunk_b{n}"] = partial(RADQTrunk, trunk, beta=10.0, top_k=k, attention_mask=mask)
            t_top = time_forward(trunk.top, ctx_ids, ctx_mask, args.device, embeddings=True) if n else 0.0
            floors[f"rad_q_trunk_b{n}"] = 1 + t_top / t_lm
        time_generate(lm, ids, mask, args, None, eos_id)  # warm-up
        timed = time_methods(lm, ids, mask, args, methods, eos_id)
        base = timed["unguided"][0]
        for name, (ms, mib) in timed.items():
            row = dict(batch=B, method=name, ms_per_token=ms, ratio=ms / base, peak_mib=mib)
            if name in floors:
                row["floor"], row["ratio_to_floor"] = floors[name], (ms / base) / floors[name]
            rows.append(row)
            print(json.dumps({k_: round(v, 3) if isinstance(v, float) else v for k_, v in row.items()}), flush=True)
        print(f"  B={B}: t_LM={t_lm:.1f} ms, t_RM(B)={t_rm_b:.1f} ms, t_RM(B·k)={t_rm_bk:.1f} ms", flush=True)
        rows.append(dict(batch=B, method="forwards", t_lm_ms=t_lm, t_rm_b_ms=t_rm_b, t_rm_bk_ms=t_rm_bk))
        write(rows, args, echo=False)  # after every batch size: a run cut short keeps what it measured
    write(rows, args)
    return rows


def write(rows, args, echo=True):
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({psutil.cpu_count()} logical cores)"
    tag = f"decode_speed_{args.device}" + (f"_{args.name}" if args.name else "")
    (out / f"{tag}.json").write_text(json.dumps({"args": asdict(args), "device": device, "rows": rows}, indent=2))
    lines = [
        f"Device: {device}; LM {args.lm}; RM backbone {args.reward_backbone} (first {args.reward_layers} layers"
        f"{', on ' + args.reward_device if args.reward_device else ''}); "
        f"k = {args.top_k}; {args.prompt_tokens}-token prompts; {args.new_tokens} new tokens; {args.dtype}.",
        "",
        "| B | method | ms/token | × unguided | floor | × floor | peak MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["method"] == "forwards":
            continue
        floor = f"{r['floor']:.2f}" if "floor" in r else ""
        to_floor = f"{r['ratio_to_floor']:.2f}" if "floor" in r else ""
        lines.append(
            f"| {r['batch']} | {r['method']} | {r['ms_per_token']:.1f} | {r['ratio']:.2f} | {floor} | {to_floor} "
            f"| {r['peak_mib']:.0f} |"
        )
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    if echo:
        print("\n".join(lines))


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(BenchmarkArguments).parse_args_into_dataclasses()
    main(arguments)
