"""The GPU check: device tests, decoding speed and training speed on one GPU, in one command (≤ 8 min on an H100).

    python benchmarks/gpu_check.py                   # on a GPU machine; writes into $OUT (or --output_dir)
    python benchmarks/gpu_check.py --quick           # the same steps on the CPU at toy sizes (tests/ run this)

Needs only what travels with the repository: no `datasets`, no `gguf`, no Hub. Models are built with random
weights from the config JSONs in `benchmarks/configs/` (real shapes: speed does not depend on the weights' values):
    1. `pytest tests/test_devices.py tests/test_decoding.py`: CUDA against the fp32 CPU reference, LM and reward
       model on different devices, one host sync per step, training steps (log in pytest.log);
    2. `decode_speed` for unguided / RAD-Q / RAD-V / naive RAD-V at B ∈ {1, 8, 32, 128}, k = 20, bf16, for each
       LM + reward-model pair below, largest last (pairs that would start after --budget_s are skipped); the
       cross-tokenizer pair reads the real tokenizers from --tokenizers_dir (`--prepare_tokenizers` writes them here;
       carry the folder to the GPU machine); the cross pair is then profiled at B = 1 (`profile_decode`:
       host syncs per step by call site, Python and kernel time, in profile_cuda_<pair>.md);
    3. `train_speed` of the reward models (fp32) against the plain backbone.
Everything lands in gpu_check.json and gpu_check.md (rewritten after every step, so a run cut short keeps what it
measured), with the issue's goals checked from the ratios of this one run.
"""

import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import HfArgumentParser

sys.path.insert(0, str(Path(__file__).parent))  # run as a script: the sibling benchmarks are plain modules
import decode_speed  # noqa: E402
import profile_decode  # noqa: E402
import train_speed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path(__file__).parent / "configs"


@dataclass
class GpuCheckArguments:
    quick: bool = field(default=False, metadata={"help": "CPU smoke run at toy sizes (exercises every step)."})
    output_dir: str = field(
        default=os.environ.get("OUT") or "benchmarks/results/gpu_check",
        metadata={"help": "Where gpu_check.json / .md and pytest.log go (default: $OUT when set)."},
    )
    run_tests: bool = field(default=True, metadata={"help": "Run the device tests first."})
    run_train_speed: bool = field(default=True, metadata={"help": "Time the training steps."})
    pairs: list[str] | None = field(
        default=None, metadata={"help": "Only these decode pairs (names as in the table; default: all, in order)."}
    )
    repeats: int = field(default=1, metadata={"help": "Timed generate calls per decode cell (median kept)."})
    tests_filter: str | None = field(default=None, metadata={"help": "A pytest -k expression for the tests step."})
    tokenizers_dir: str = field(
        default="benchmarks/tokenizers",
        metadata={
            "help": "Folder with gemma3-270m/ and smollm2-135m/ tokenizers for the cross-tokenizer pair (git-ignored; "
            "fill it with --prepare_tokenizers here, carry it to the GPU machine); the pair is skipped without it."
        },
    )
    prepare_tokenizers: bool = field(
        default=False,
        metadata={"help": "Only write the embedded models' tokenizers into --tokenizers_dir, then stop."},
    )
    profile_cross: bool = field(
        default=True, metadata={"help": "Profile the cross-tokenizer pair at B = 1 after timing it (profile_*.md)."}
    )
    budget_s: float = field(
        default=330.0, metadata={"help": "Start no further decode pair after this many seconds (the run stays short)."}
    )


def decode_pairs(quick: bool) -> list[dict]:
    """(name, LM config, reward-backbone config, reward layers): the reward model guiding the LM."""
    c = lambda name: str(CONFIGS / f"{name}.json")  # noqa: E731
    if quick:  # the cross pair reads tiny tokenizers from --tokenizers_dir (tests/test_gpu_check.py writes them)
        return [
            dict(name="quick", lm=c("tiny-llama"), rm=c("tiny-llama"), layers=1),
            dict(name="quick_cross", lm=c("tiny-llama"), rm=c("tiny-llama"), layers=1, cross=True),
        ]
    return [
        # The shipped depth (all but rad-q-sentiment's 18): SmolLM2-135M's first 12 layers, guiding SmolLM2-135M.
        dict(name="lm135m_rm135m-12l", lm=c("smollm2-135m"), rm=c("smollm2-135m"), layers=12),
        # Another tokenizer (issue 14): Gemma-3-270M steered through text by the shipped models' shape.
        dict(name="gemma270m_rm135m-12l_cross", lm=c("gemma3-270m"), rm=c("smollm2-135m"), layers=12, cross=True),
        dict(name="lm8b_rm135m", lm=c("llama-3.1-8b"), rm=c("smollm2-135m"), layers=30),
        dict(name="lm1.7b_rm135m", lm=c("smollm2-1.7b"), rm=c("smollm2-135m"), layers=30),
        dict(name="lm8b_rm135m-12l", lm=c("llama-3.1-8b"), rm=c("smollm2-135m"), layers=12),
        dict(name="lm8b_rm360m", lm=c("llama-3.1-8b"), rm=c("smollm2-360m"), layers=32),
    ]


def run_tests(out: Path, filter_: str | None) -> dict:
    # -rP: the passing tests' prints too (where the host syncs happen).
    cmd = [sys.executable, "-m", "pytest", "-q", "-rP", "-p", "no:cacheprovider", "tests/test_devices.py"]
    cmd += ["tests/test_decoding.py"] + (["-k", filter_] if filter_ else [])
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    (out / "pytest.log").write_text(proc.stdout + proc.stderr)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"returncode": proc.returncode, "summary": summary}


def prepare_tokenizers(dest: Path) -> None:
    """The embedded Gemma-3 and SmolLM2 tokenizers (37 MB) in `dest`: the GPU machine has neither GGUF nor Hub."""
    from transformers import AutoTokenizer

    from rad_q_hf.embedded import resolve

    for name in ("gemma3-270m", "smollm2-135m"):
        AutoTokenizer.from_pretrained(resolve(name)).save_pretrained(dest / name)
        print(f"wrote {dest / name}")


@contextmanager
def freed_after():
    """The models a step built are freed when it ends, also when it fails: the next pair needs the GPU memory."""
    try:
        yield
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def bench_args(pair: dict, quick: bool, device: str, tokenizers: Path, **kw) -> decode_speed.BenchmarkArguments:
    cross = pair.get("cross", False)  # random weights and real tokenizers: the bridge sees random text
    return decode_speed.BenchmarkArguments(
        lm=pair["lm"],
        reward_backbone=pair["rm"],
        reward_layers=pair["layers"],
        lm_tokenizer=str(tokenizers / "gemma3-270m") if cross else None,
        reward_tokenizer=str(tokenizers / "smollm2-135m") if cross else None,
        prompt_tokens=8 if quick else 32,
        device=device,
        dtype="float32" if quick else "bfloat16",
        name=pair["name"],
        **kw,
    )


def run_decode(pair: dict, quick: bool, device: str, tmp: str, repeats: int, tokenizers: Path) -> list[dict]:
    cross = pair.get("cross", False)
    args = bench_args(
        pair,
        quick,
        device,
        tokenizers,
        batch_sizes=[1, 2] if quick else [1, 8, 32] if cross else [1, 8, 32, 128],
        naive_batch_sizes=[] if cross else [1] if quick else [1, 8, 32, 128],
        new_tokens=4 if quick else 64,
        warmup=True,
        repeats=repeats,
        trunk_blocks=[] if cross else [0, 1],  # RAD-Q on the LM's own trunk (issue 15): any tap layer costs alike
        trunk_tap_layer=1 if quick else 9,
        output_dir=tmp,
    )
    with freed_after():
        return [dict(r, pair=pair["name"]) for r in decode_speed.main(args)]


def run_profile(pair: dict, quick: bool, device: str, out: Path, tokenizers: Path) -> str:
    """profile_<device>_<pair>.md: host syncs by call site, Python and kernel time of one call per method at B = 1.
    On a GPU the cross-tokenizer step costs far more than its forwards (issue 14); this says where."""
    args = bench_args(
        pair, quick, device, tokenizers, batch_sizes=[1], new_tokens=2 if quick else 16, output_dir=str(out)
    )
    with freed_after():
        return str(profile_decode.main(args))


def run_train(quick: bool, device: str, tmp: str) -> dict:
    args = train_speed.TrainSpeedArguments(
        backbone=str(CONFIGS / ("tiny-llama.json" if quick else "smollm2-135m.json")),
        num_layers=1 if quick else 12,
        batch_size=2 if quick else 32,
        seq_len=16 if quick else 128,
        repeats=1 if quick else 5,
        device=device,
        output_dir=tmp,
    )
    return asdict(args), train_speed.main(args)


def goals(rows: list[dict]) -> list[str]:
    """The issue's goals, read off this run's ratios."""
    lines = []
    by = {(r["pair"], r["batch"], r["method"]): r for r in rows if r["method"] != "forwards"}
    pairs = sorted({r["pair"] for r in rows}, key=[r["pair"] for r in rows].index)
    for pair in pairs:
        bs = sorted({b for (p, b, _) in by if p == pair})
        rad_q, rad_v = ("rad_q_cross", "rad_v_cross") if pair.endswith("_cross") else ("rad_q", "rad_v")
        q = {b: by[(pair, b, rad_q)]["ratio"] for b in bs if (pair, b, rad_q) in by}
        v = {b: by[(pair, b, rad_v)]["ms_per_token"] / by[(pair, b, rad_q)]["ms_per_token"] for b in q}
        if "_rm135m" in pair and not pair.startswith("lm135m"):
            met = all(x <= 1.10 for x in q.values())
            lines.append(
                f"- {pair}: RAD-Q × unguided ≤ 1.10 at every B: **{'met' if met else 'not met'}** "
                f"({', '.join(f'B={b}: {x:.2f}' for b, x in q.items())})"
            )
        grows = all(v[a] <= v[b] for a, b in zip(list(v), list(v)[1:], strict=False))
        neck = [b for b in q if by[(pair, b, rad_v)]["ratio"] >= 2.0]
        lines.append(
            f"- {pair}: RAD-V ÷ RAD-Q time {', '.join(f'B={b}: {x:.2f}' for b, x in v.items())} "
            f"({'grows' if grows else 'does not grow monotonically'} with B); RAD-V at least doubles the LM's step "
            f"from B = {neck[0] if neck else '—'}"
        )
        over = [
            f"{m} B={b}: {by[(pair, b, m)]['ratio_to_floor']:.2f}"
            for b in bs
            for m in (rad_q, rad_v)
            if (pair, b, m) in by and by[(pair, b, m)]["ratio_to_floor"] > 1.05
        ]
        lines.append(
            f"- {pair}: processor overhead × floor ≤ 1.05: {'met' if not over else 'not met: ' + ', '.join(over)}"
        )
    return lines


def write(out: Path, report: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    env = report["env"]
    lines = [
        f"# GPU check on {env['device']}",
        "",
        f"torch {env['torch']}, transformers {env['transformers']}, Python {env['python']}; host {env.get('host')}; "
        f"{report['elapsed_s']:.0f} s; random weights with real shapes (`benchmarks/configs/`).",
        "",
    ]
    if "tests" in report:
        lines += [f"Tests (`pytest tests/test_devices.py tests/test_decoding.py`): {report['tests']['summary']}", ""]
    if report["decode"]:
        lines += ["## Goals (ratios from this run)", "", *goals(report["decode"]), "", "## Decoding speed", ""]
        lines += [
            "| pair | B | method | ms/token | × unguided | floor | × floor | peak MiB |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in report["decode"]:
            if r["method"] == "forwards":
                continue
            fl = (f"{r['floor']:.2f}", f"{r['ratio_to_floor']:.2f}") if "floor" in r else ("", "")
            lines.append(
                f"| {r['pair']} | {r['batch']} | {r['method']} | {r['ms_per_token']:.1f} | {r['ratio']:.2f} "
                f"| {fl[0]} | {fl[1]} | {r['peak_mib']:.0f} |"
            )
    if report.get("train"):
        ta = report["train_args"]
        lines += ["", f"## Training speed ({Path(ta['backbone']).stem}, first {ta['num_layers']} layers, fp32)", ""]
        lines += ["| step | ms/step | tokens/s | ratio to baseline |", "|---|---:|---:|---:|"]
        for name, r in report["train"].items():
            lines.append(f"| {name} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:.0f} | {r['ratio']:.2f} |")
    if report.get("profile"):
        lines += ["", f"Profile of the cross-tokenizer pair at B = 1: `{Path(report['profile']).name}`."]
    if report["skipped"]:
        lines += ["", "Skipped decode pairs: " + "; ".join(report["skipped"])]
    if report["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e.splitlines()[-1]}" for e in report["errors"]]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def host_cpu() -> str:
    """The host CPU's model name, its core count and torch's thread count."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def main(args: GpuCheckArguments) -> dict:
    start = time.perf_counter()
    tokenizers = Path(args.tokenizers_dir)
    if args.prepare_tokenizers:
        return prepare_tokenizers(tokenizers)
    device = "cpu" if args.quick else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; use --quick for the CPU smoke run.")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(
        device=torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)",
        torch=torch.__version__,
        transformers=transformers.__version__,
        python=platform.python_version(),
        host=host_cpu(),  # small models are host-bound on a GPU: the CPU sets the pace of every row below
    )
    report = dict(env=env, args=asdict(args), decode=[], train=None, errors=[], skipped=[], elapsed_s=0.0)

    def step(name, fn):
        print(f"[gpu_check {time.perf_counter() - start:5.0f} s] {name}", flush=True)
        try:
            return fn()
        except Exception:  # one broken step must not lose the others' measurements
            report["errors"].append(f"{name}: {traceback.format_exc()}")
            print(report["errors"][-1], flush=True)
        finally:
            report["elapsed_s"] = time.perf_counter() - start
            write(out, report)

    if args.run_tests:
        report["tests"] = step("tests", lambda: run_tests(out, args.tests_filter))
    with tempfile.TemporaryDirectory() as tmp:
        if args.run_train_speed:
            timed = step("train_speed", lambda: run_train(args.quick, device, tmp))
            report["train_args"], report["train"] = timed or (None, None)
        for pair in decode_pairs(args.quick):
            if args.pairs and pair["name"] not in args.pairs:
                continue
            if time.perf_counter() - start > args.budget_s:
                report["skipped"].append(pair["name"])
                continue
            if pair.get("cross") and not (tokenizers / "gemma3-270m").is_dir():
                report["skipped"].append(f"{pair['name']} (no {tokenizers}/: --prepare_tokenizers, then carry it)")
                continue
            report["decode"] += (
                step(
                    f"decode_speed {pair['name']}",
                    lambda p=pair: run_decode(p, args.quick, device, tmp, args.repeats, tokenizers),
                )
                or []
            )
            if pair.get("cross") and args.profile_cross:
                report["profile"] = step(
                    f"profile {pair['name']}", lambda p=pair: run_profile(p, args.quick, device, out, tokenizers)
                )
    write(out, report)
    print((out / "gpu_check.md").read_text())
    return report


if __name__ == "__main__":
    main(*HfArgumentParser(GpuCheckArguments).parse_args_into_dataclasses())
