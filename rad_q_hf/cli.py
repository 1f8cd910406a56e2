"""`rad-q`: steer generation with a shipped reward model, or train one.

rad-q generate "The movie was"                       # RAD-Q detoxification with the embedded SmolLM2
rad-q generate "I think" --task positive --method rad-v --beta 20 --compare
rad-q train toxicity --method rad-q --data_dir ../shared/data --output_dir outputs/rad-q-toxicity
rad-q train sentiment --help
rad-q evaluate --task detox --method none,rad-q,rad-v --beta 10,20,50 --num-prompts 100 --output outputs/eval-detox
"""

import argparse
import os
import sys
import time
from pathlib import Path

from transformers import HfArgumentParser

from .evaluation.config import TASKS  # task -> (shipped reward model per method, label, direction)
from .scoring import score_texts

METHODS = ("rad-q", "rad-v", "rad-q-trunk", "none")


class CLIError(Exception):
    """A user error: printed as `rad-q: error: ...` without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rad-q", description="Reward-augmented decoding (RAD-Q / RAD-V).")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="Continue a prompt, steered by a reward model.")
    gen.add_argument("prompt", help="The text to continue.")
    gen.add_argument("--task", choices=sorted(TASKS), default="detox", help="What to steer towards (default detox).")
    gen.add_argument(
        "--method",
        choices=METHODS,
        default="rad-q",
        help="rad-q, rad-v, rad-q-trunk (RAD-Q on the LM's own hidden states), or none (unguided).",
    )
    gen.add_argument("--beta", type=float, default=10.0, help="Reward weight β (default 10).")
    gen.add_argument("--top-k", "--top_k", type=int, default=20, help="Candidates per step (default 20).")
    gen.add_argument(
        "--num-samples", "--num_samples", type=int, default=3, help="Continuations to sample (default 3)."
    )
    gen.add_argument("--max-new-tokens", "--max_new_tokens", type=int, default=30, help="Tokens per continuation.")
    gen.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    gen.add_argument("--lm", default="smollm2-135m", help="Causal LM: embedded name, folder or Hub id.")
    gen.add_argument(
        "--reward-model", "--reward_model", default=None, help="Reward model folder, Hub id or shipped name."
    )
    gen.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    gen.add_argument("--compare", action="store_true", help="Also sample unguided; print both with rewards.")

    # rank and evaluate parse their flags from their configs (HfArgumentParser): `--top_k` and `--top-k` alike
    sub.add_parser(
        "rank", add_help=False, help="Singular-value spectrum of reward models' (prefix × token) reward matrices."
    )
    sub.add_parser("evaluate", add_help=False, help="The papers' protocol: sample, judge, report (resumable).")

    train = sub.add_parser("train", help="Train a reward model (the examples/ scripts' entry points).")
    train.add_argument("what", choices=("toxicity", "sentiment", "distill"), help="Which training script to run.")
    train.add_argument("args", nargs=argparse.REMAINDER, help="Its arguments (`rad-q train toxicity --help`).")
    return parser


class ConfigParser(HfArgumentParser):
    """`HfArgumentParser` for one subcommand's config, with `rad-q: error: ...` messages (exit 2)."""

    def __init__(self, dataclass_type, command: str):
        super().__init__(dataclass_type, prog=f"rad-q {command}", description=dataclass_type.__doc__.split("\n")[0])
        for action in self._actions:
            if action.dest == "betas":  # `--beta 10,20,50` as well as `--beta 10 20 50`: the config splits it
                action.type = str

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(2, f"rad-q: error: {message}\n")

    def parse(self, argv: list[str]):
        config, rest = self.parse_args_into_dataclasses(argv, return_remaining_strings=True, look_for_args_file=False)
        if rest:
            self.error(f"unrecognized arguments: {' '.join(rest)}")
        return config


def _is_main_process() -> bool:
    """Under `accelerate launch` every process fails alike: the first one prints the error at once."""
    return os.environ.get("RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("rank", "evaluate"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "generate":
            generate(args)
        elif args.command == "train":
            train(args.what, args.args)
        elif args.command == "rank":
            rank(rest)
        elif args.command == "evaluate":
            evaluate(rest)
    except (CLIError, FileNotFoundError, ValueError, OSError) as error:
        if not _is_main_process():  # the first process prints the same error; the launcher stops this one then
            time.sleep(10)
        parser.exit(2, f"rad-q: error: {error}\n")
    return 0


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda, but CUDA is not available here; use --device cpu.")


def generate(args) -> None:
    from transformers import AutoModelForCausalLM

    from .checkpoints import lm_path, load_checkpoint
    from .evaluation.models import load_reward_model, load_tokenizer, reward_tokenizer, task_label

    if args.num_samples < 1 or args.max_new_tokens < 1 or args.top_k < 1:
        raise CLIError("--num-samples, --max-new-tokens and --top-k must be ≥ 1.")
    if not args.prompt.strip():
        raise CLIError('The prompt is empty: give some text to continue, e.g. rad-q generate "The movie was".')
    _check_device(args.device)
    tokenizer = load_tokenizer(args.lm)
    lm = load_checkpoint(AutoModelForCausalLM.from_pretrained, lm_path(args.lm), args.lm).to(args.device).eval()
    reward_model, label = None, 0
    if args.method != "none" or args.compare:
        method = "rad-q" if args.method == "none" else args.method
        name = args.reward_model or TASKS[args.task][0][method]
        reward_model = load_reward_model(name, method, args.device, lm)  # a trunk model is checked against the LM
        label = task_label(reward_model, args.task)  # a model of another task is refused before sampling
    batch = tokenizer([args.prompt] * args.num_samples, return_tensors="pt").to(args.device)
    if batch["input_ids"].shape[1] == 0:
        raise CLIError(f"The prompt {args.prompt!r} has no tokens for this LM's tokenizer; give some text.")
    runs = {"unguided": _sample(args, lm, tokenizer, batch, None)} if args.compare or args.method == "none" else {}
    if args.method != "none":
        runs[f"{args.method} (β={args.beta:g}, {args.task})"] = _sample(args, lm, tokenizer, batch, reward_model)
    score_tokenizer = reward_tokenizer(reward_model, tokenizer) if args.compare else None
    for title, texts in runs.items():
        print(f"== {title}")
        whole = [args.prompt + t for t in texts]
        scores = score_texts(reward_model, score_tokenizer, whole, label) if args.compare else None
        for i, text in enumerate(whole):
            print(f"{i + 1}. " + (f"[{scores[i]:.2f}] " if scores is not None else "") + text)
        if scores is not None:
            high = sum(score >= 0.5 for score in scores)
            print(f"mean score {sum(scores) / len(scores):.2f}; {high} of {len(scores)} samples score ≥ 0.5")


def _sample(args, lm, tokenizer, batch, reward_model) -> list[str]:
    """`num_samples` continuations, guided by `reward_model` (RAD-Q or RAD-V as `--method`) or unguided (None)."""
    import torch

    from .evaluation.models import steering_processor

    processors = []
    if reward_model is not None:
        processors = [steering_processor(args.method, args.task, reward_model, args.beta, args.top_k,
                                         batch["attention_mask"], tokenizer)]  # fmt: skip
    torch.manual_seed(args.seed)
    out = lm.generate(**batch, do_sample=True, top_k=args.top_k, temperature=1.0, max_new_tokens=args.max_new_tokens,
                      logits_processor=processors, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def rank(argv: list[str]) -> None:
    from .analysis import RankConfig, rank_reward_models, summary_line

    config = ConfigParser(RankConfig, "rank").parse(argv)
    rank_reward_models(config, on_model=lambda name, stats: print(summary_line(name, stats)))
    out = Path(config.output)
    print(f"wrote {out / 'results.json'}, {out / 'spectra.png'} and {out / 'matrices.safetensors'}")


def evaluate(argv: list[str]) -> None:
    from .evaluation import EvaluationConfig, run_evaluation
    from .evaluation.prompts import load_prompts
    from .evaluation.runner import progress_on_disk

    config = ConfigParser(EvaluationConfig, "evaluate").parse(argv)
    _check_device(config.device)
    try:
        report = run_evaluation(config)
    except KeyboardInterrupt:
        if _is_main_process():
            counts = progress_on_disk(config, load_prompts(config.prompts, config.num_prompts))
            listing = ", ".join(f"{name} {n}/{config.num_prompts}" for name, n in counts.items())
            print(f"\nrad-q: stopped (Ctrl-C). Prompts sampled so far are kept in {config.output} ({listing}); run "
                  "the same command again to resume from there.", file=sys.stderr)  # fmt: skip
        sys.exit(130)
    if report is not None:
        print((Path(config.output) / "results.md").read_text())
        print(f"wrote {config.output}/results.json and results.md")


def train(what: str, argv: list[str]) -> None:
    from .training import scripts

    scripts.run(what, argv, prog=f"rad-q train {what}")


if __name__ == "__main__":
    sys.exit(main())
