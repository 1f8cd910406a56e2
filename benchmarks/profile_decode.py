"""Where a guided decoding step spends its time: host syncs, Python and kernels, per method, in one generate call.

    python benchmarks/profile_decode.py --lm benchmarks/configs/gemma3-270m.json \
        --reward_backbone benchmarks/configs/smollm2-135m.json --reward_layers 12 \
        --lm_tokenizer benchmarks/tokenizers/gemma3-270m --reward_tokenizer benchmarks/tokenizers/smollm2-135m \
        --device cuda --dtype bfloat16 --batch_sizes 1 8 --new_tokens 16

On a GPU a small model's step is bound by the host (kernel launches, Python); every host sync stops the CPU from
running ahead of the GPU, so they are counted per step with their call sites (`torch.cuda.set_sync_debug_mode`).
Writes profile_<device>[_<name>].md to --output_dir: per method and batch size, ms per token, syncs per step by
site, the top Python functions (cProfile, own time) and the top operators (torch.profiler, self CPU / device time).
Takes the arguments of decode_speed.py; the timing is of the profiled call (profilers slow it: compare methods here,
take speed from decode_speed).
"""

import cProfile
import io
import pstats
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import torch
from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: the sibling benchmark is a plain module
import decode_speed  # noqa: E402


def count_syncs(fn, cuda: bool) -> tuple[object, Counter]:
    """fn()'s result and its host syncs by call site (the innermost rad_q_hf / transformers frames); none on a CPU."""
    sites = Counter()
    if not cuda:
        return fn(), sites

    def hook(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message).lower():
            frames = [
                f for f in traceback.extract_stack() if "/rad_q_hf/" in f.filename or "/transformers/" in f.filename
            ]
            sites[" < ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(frames[-3:]))] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            return fn(), sites
        finally:
            torch.cuda.set_sync_debug_mode("default")


def profile_method(lm, ids, mask, args, factory, eos_id) -> str:
    """A markdown section for one method at one batch size."""
    cuda = args.device.startswith("cuda")
    run = lambda: decode_speed.run_generate(  # noqa: E731
        lm, ids, mask, args, [factory()] if factory else [], eos_id, args.new_tokens
    )
    run()  # warm-up: kernel selection, the bridge's tables
    decode_speed.sync(args.device)
    t0 = time.perf_counter()
    _, sites = count_syncs(run, cuda)
    decode_speed.sync(args.device)
    ms = 1000 * (time.perf_counter() - t0) / args.new_tokens
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as tp:
        run()
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    steps = args.new_tokens
    lines = [f"{ms:.1f} ms/token (sync counting on), {sum(sites.values()) / steps:.1f} host syncs per step", ""]
    lines += [
        f"- {n / steps:.2f}/step  {site or '(outside rad_q_hf / transformers)'}" for site, n in sites.most_common(12)
    ]
    lines += ["", "```", text.getvalue().split("Ordered by")[-1].split("\n", 1)[-1].strip(), "```", "", "```"]
    lines += [tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), "```"]
    if cuda:
        lines += ["", "```", tp.key_averages().table(sort_by=sort, row_limit=10), "```"]
    return "\n".join(lines)


def main(args: decode_speed.BenchmarkArguments) -> Path:
    torch.set_grad_enabled(False)
    lm, rad_q, rad_v, tokenizer, rm_tokenizer = decode_speed.build_models(args)
    cross = decode_speed.is_cross(lm, rad_q, tokenizer, rm_tokenizer)
    eos_id = decode_speed.eos_of(lm, tokenizer)
    path = Path(args.output_dir) / f"profile_{args.device.split(':')[0]}{'_' + args.name if args.name else ''}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [f"# Decoding profile on {args.device} ({args.dtype}), {args.new_tokens} new tokens, k = {args.top_k}", ""]
    for B in args.batch_sizes:
        ids, mask = decode_speed.batch_prompts(lm, tokenizer, B, args, eos_id)
        guided = decode_speed.guided_methods(rad_q, rad_v, mask, args, tokenizer, rm_tokenizer, cross)
        methods = {"unguided": None} | guided
        for name, factory in methods.items():
            print(f"B={B} {name}", flush=True)
            out += [f"## B = {B}, {name}", "", profile_method(lm, ids, mask, args, factory, eos_id), ""]
            path.write_text("\n".join(out))  # after every section: a run cut short keeps what it profiled
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main(HfArgumentParser(decode_speed.BenchmarkArguments).parse_args_into_dataclasses()[0])
