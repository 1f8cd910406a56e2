"""`rad-q`: steer generation with a shipped reward model, or train one.

rad-q generate "The movie was"                       # RAD-Q detoxification with the embedded SmolLM2
rad-q generate "I think" --task positive --method rad-v --beta 20 --compare
rad-q train toxicity --method rad-q --data_dir ../shared/data --output_dir outputs/rad-q-toxicity
rad-q train sentiment --help
rad-q evaluate --task detox --method none,rad-q,rad-v --beta 10,20,50 --num-prompts 100 --output outputs/eval-detox
"""

import argparse
import sys
from pathlib import Path

from .evaluation.runner import TASKS  # task -> (shipped reward model per method, label, direction)

METHODS = ("rad-q", "rad-v", "none")


class CLIError(Exception):
    """A user error: printed as `rad-q: error: ...` without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rad-q", description="Reward-augmented decoding (RAD-Q / RAD-V).")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="Continue a prompt, steered by a reward model.")
    gen.add_argument("prompt", help="The text to continue.")
    gen.add_argument("--task", choices=sorted(TASKS), default="detox", help="What to steer towards (default detox).")
    gen.add_argument("--method", choices=METHODS, default="rad-q", help="rad-q, rad-v, or none (unguided).")
    gen.add_argument("--beta", type=float, default=10.0, help="Reward weight β (default 10).")
    gen.add_argument("--top-k", type=int, default=20, help="Candidates per step (default 20).")
    gen.add_argument("--num-samples", type=int, default=3, help="Continuations to sample (default 3).")
    gen.add_argument("--max-new-tokens", type=int, default=30, help="Tokens per continuation (default 30).")
    gen.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    gen.add_argument("--lm", default="smollm2-135m", help="Causal LM: embedded name, folder or Hub id.")
    gen.add_argument("--reward-model", default=None, help="Reward model folder, Hub id or shipped name.")
    gen.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    gen.add_argument("--compare", action="store_true", help="Also sample unguided; print both with rewards.")

    rank = sub.add_parser("rank", help="Singular-value spectrum of reward models' (prefix × token) reward matrices.")
    rank.add_argument("--reward-model", action="append", required=True,
                      help="A shipped name, folder or Hub id; repeat to compare several on one plot.")  # fmt: skip
    rank.add_argument("--num-prefixes", type=int, default=200, help="Rows: cuts of prompts + sampled continuations.")
    rank.add_argument("--tokens", choices=("topk", "vocab"), default="topk",
                      help="Columns: the union of the LM's top-k at every prefix, or (a sample of) the vocabulary.")  # fmt: skip
    rank.add_argument("--top-k", type=int, default=20, help="k for --tokens topk (default 20).")
    rank.add_argument("--vocab-size", type=int, default=None, help="--tokens vocab: a seeded sample of N tokens.")
    rank.add_argument("--prompts-file", default=None, help="JSONL with `text` or `prompt.text` (default: built-in).")
    rank.add_argument("--continuation-tokens", type=int, default=20, help="Sampled tokens after each prompt.")
    rank.add_argument("--lm", default="smollm2-135m", help="Causal LM for continuations and top-k.")
    rank.add_argument("--center", action="store_true", help="Centre each row before the SVD.")
    rank.add_argument("--seed", type=int, default=0)
    rank.add_argument("--output", default="outputs/rank", help="Folder for results.json and spectra.png.")

    ev = sub.add_parser("evaluate", help="The papers' protocol: sample, judge, report (resumable).")
    ev.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="detox",
        help="detox (RTP non-toxic prompts), positive, negative (neutral prompts).",
    )
    ev.add_argument("--method", default="none,rad-q,rad-v", help="Comma-separated: none, rad-q, rad-v.")
    ev.add_argument("--beta", default="10", help="Comma-separated β values, e.g. 10,20,50.")
    ev.add_argument("--num-prompts", type=int, default=100, help="The first N prompts of the set (default 100).")
    ev.add_argument("--samples-per-prompt", type=int, default=25)
    ev.add_argument("--max-new-tokens", type=int, default=20)
    ev.add_argument("--top-k", type=int, default=20, help="Top-k sampling, guided and unguided (default 20).")
    ev.add_argument("--prompts", default=None, help="A shipped set (rtp-nontoxic, sentiment-neutral, ...) or JSONL.")
    ev.add_argument("--lm", default="smollm2-135m", help="The steered LM: embedded name, folder or Hub id.")
    ev.add_argument("--rad-q-model", default=None, help="RAD-Q reward model (default: the task's shipped one).")
    ev.add_argument("--rad-v-model", default=None, help="RAD-V reward model (default: the task's shipped one).")
    ev.add_argument(
        "--toxicity-judge", default="profanity-check", help="profanity-check | perspective | hf:<model>[#label]."
    )
    ev.add_argument("--sentiment-judge", default="vader", help="vader | distilbert-sst2 | hf:<model>[#label].")
    ev.add_argument(
        "--fluency-lm", default="gemma3-270m", help="Perplexity judge: gemma3-270m, a causal LM id/folder, or none."
    )
    ev.add_argument("--prompts-per-batch", type=int, default=4, help="Prompts per generate call (default 4).")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ev.add_argument("--output", default="outputs/evaluate", help="Output folder; a re-run resumes in it.")

    train = sub.add_parser("train", help="Train a reward model (the examples/ scripts' entry points).")
    train.add_argument("what", choices=("toxicity", "sentiment", "distill"), help="Which training script to run.")
    train.add_argument("args", nargs=argparse.REMAINDER, help="Its arguments (`rad-q train toxicity --help`).")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            generate(args)
        elif args.command == "train":
            train(args.what, args.args)
        elif args.command == "rank":
            rank(args)
        elif args.command == "evaluate":
            evaluate(args)
    except (CLIError, FileNotFoundError, ValueError, OSError) as error:
        parser.exit(2, f"rad-q: error: {error}\n")
    return 0


def _load_reward_model(args, device):
    from .checkpoints import shipped_models
    from .evaluation.runner import load_reward_model

    name = args.reward_model or TASKS[args.task][0][args.method]
    if args.reward_model is None and name not in shipped_models():
        raise CLIError(f"The shipped model {name!r} is not in this installation (shipped: {shipped_models()}).")
    return load_reward_model(name, args.method, device)


def _check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda, but CUDA is not available here; use --device cpu.")


def generate(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .decoding import RADQ, RADV
    from .embedded import is_embedded, resolve

    if args.num_samples < 1 or args.max_new_tokens < 1 or args.top_k < 1:
        raise CLIError("--num-samples, --max-new-tokens and --top-k must be ≥ 1.")
    _check_device(args.device)
    lm_path = resolve(args.lm) if is_embedded(args.lm) else args.lm
    tokenizer = AutoTokenizer.from_pretrained(lm_path, padding_side="left")
    lm = AutoModelForCausalLM.from_pretrained(lm_path).to(args.device).eval()
    batch = tokenizer([args.prompt] * args.num_samples, return_tensors="pt").to(args.device)
    _, label, direction = TASKS[args.task]
    method = args.method
    reward_model = None
    if method != "none" or args.compare:
        probe = argparse.Namespace(**{**vars(args), "method": "rad-q" if method == "none" else method})
        reward_model = _load_reward_model(probe, args.device)

    def sample(guided: bool) -> list[str]:
        processors = []
        if guided:
            cls = RADQ if method == "rad-q" else RADV
            processors = [cls(reward_model, beta=args.beta, top_k=args.top_k, label=label, direction=direction,
                              attention_mask=batch["attention_mask"], tokenizer=tokenizer)]  # fmt: skip
        torch.manual_seed(args.seed)
        out = lm.generate(**batch, do_sample=True, top_k=args.top_k, temperature=1.0, max_new_tokens=args.max_new_tokens,
                          logits_processor=processors, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)

    runs = {"unguided": sample(False)} if args.compare or method == "none" else {}
    if method != "none":
        runs[f"{method} (β={args.beta:g}, {args.task})"] = sample(True)
    for title, texts in runs.items():
        print(f"== {title}")
        scores = (
            score_texts(reward_model, tokenizer, [args.prompt + t for t in texts], label) if args.compare else None
        )
        for i, text in enumerate(texts):
            prefix = f"[{scores[i]:.2f}] " if scores is not None else ""
            print(f"{i + 1}. {prefix}{args.prompt}{text}")


def score_texts(model, tokenizer, texts: list[str], label: int = 0) -> list[float]:
    """Reward of each whole text (its last prefix), clamped to [0, 1]."""
    import torch

    from .training.reward_trainer import last_token, prefix_rewards

    batch = tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True, padding_side="right")
    batch = batch.to(next(model.parameters()).device)
    with torch.no_grad():
        rewards, _ = prefix_rewards(model, batch["input_ids"], batch["attention_mask"])
    return last_token(rewards, batch["attention_mask"])[:, label].clamp(0, 1).tolist()


DEFAULT_PROMPTS = [
    "The new neighbours moved in last week and",
    "I asked the waiter for the bill, but he",
    "Honestly, the worst part of the movie was",
    "My brother told me that his teacher",
    "The city council voted on Tuesday to",
    "She looked at the old photograph and",
    "People who post comments like that are",
    "After the game, the fans started to",
]


def rank(args) -> None:
    import json
    from pathlib import Path

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    from .analysis import plot_spectra, reward_matrix, spectrum_stats
    from .checkpoints import default_checkpoint, shipped_models
    from .embedded import is_embedded, resolve
    from .evaluation import load_prompts

    if args.num_prefixes < 1 or args.top_k < 1 or args.continuation_tokens < 0:
        raise CLIError("--num-prefixes and --top-k must be ≥ 1, --continuation-tokens ≥ 0.")
    prompts = load_prompts(args.prompts_file) if args.prompts_file else DEFAULT_PROMPTS
    lm_path = resolve(args.lm) if is_embedded(args.lm) else args.lm
    tokenizer = AutoTokenizer.from_pretrained(lm_path)
    lm = AutoModelForCausalLM.from_pretrained(lm_path).eval()
    torch.manual_seed(args.seed)
    texts, n_rows = [], 0
    for prompt in prompts * (1 + args.num_prefixes // max(1, len(prompts))):  # sampled continuations differ
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        if args.continuation_tokens:
            ids = lm.generate(ids, do_sample=True, top_k=args.top_k, max_new_tokens=args.continuation_tokens,
                              pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        text = ids[0].tolist()[: args.num_prefixes - n_rows - 1]
        texts.append(text)
        n_rows += len(text) + 1
        if n_rows >= args.num_prefixes:
            break
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if args.tokens == "topk":
        with torch.no_grad():
            tops = [lm(torch.tensor([[bos] + t])).logits[0].topk(args.top_k, -1).indices.flatten() for t in texts]
        tokens = torch.cat(tops).unique()
    else:
        tokens = torch.arange(len(tokenizer))
        if args.vocab_size:
            tokens = tokens[torch.randperm(len(tokens), generator=torch.Generator().manual_seed(args.seed))]
            tokens = tokens[: args.vocab_size].sort().values
    cuts = [tuple(text[:p]) for text in texts for p in range(len(text) + 1)]  # the rows of R, in order
    first = {cut: i for i, cut in reversed(list(enumerate(cuts)))}
    distinct = torch.tensor(sorted(first.values()))
    results, spectra, bounds, matrices = {}, {}, {}, {}
    for name in args.reward_model:
        path = default_checkpoint(name) if name in shipped_models() else name
        model = AutoModel.from_pretrained(path).eval()
        if model.config.vocab_size != lm.config.vocab_size:
            raise CLIError(f"{name} has vocabulary size {model.config.vocab_size}, the LM {lm.config.vocab_size}.")
        R = reward_matrix(model, texts, tokens)[distinct]  # repeated prompts give repeated prefixes: keep one row each
        stats = spectrum_stats(R, center=args.center)
        stats["model_type"], stats["d_plus_1"] = model.config.model_type, model.config.hidden_size + 1
        stats["prefix_rows_before_dedup"] = len(cuts)
        if not args.center:  # the row-centred spectrum too: it removes the per-prefix baseline (RAD-Q's bᵀh_t)
            stats["row_centered"] = spectrum_stats(R, center=True)
        results[name], spectra[name] = stats, stats["singular_values"]
        matrices[name] = R.float().contiguous()
        if model.config.model_type == "rad_q":
            bounds[f"d + 1 = {stats['d_plus_1']}"] = stats["d_plus_1"]
        line = f"{name}: R {stats['shape'][0]}×{stats['shape'][1]}, numerical rank {stats['numerical_rank']}, "
        line += f"90/99/99.9 % energy at rank {stats['rank_90']}/{stats['rank_99']}/{stats['rank_99.9']}"
        if "row_centered" in stats:
            c = stats["row_centered"]
            line += f"; row-centred: rank {c['numerical_rank']}, energy {c['rank_90']}/{c['rank_99']}/{c['rank_99.9']}"
        print(f"{line} (d + 1 = {stats['d_plus_1']})")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    (out / "results.json").write_text(json.dumps({"args": config, "results": results}, indent=2) + "\n")
    plot_spectra(spectra, str(out / "spectra.png"), bounds)
    save_file({**matrices, "tokens": tokens.contiguous()}, out / "matrices.safetensors")
    print(f"wrote {out / 'results.json'}, {out / 'spectra.png'} and {out / 'matrices.safetensors'}")


def evaluate(args) -> None:
    from .evaluation import EvaluationConfig, run_evaluation

    try:
        betas = tuple(float(b) for b in args.beta.split(","))
    except ValueError as error:
        raise CLIError(f"--beta takes comma-separated numbers, got {args.beta!r}.") from error
    _check_device(args.device)
    config = EvaluationConfig(
        task=args.task, methods=tuple(m.strip() for m in args.method.split(",")), betas=betas,
        num_prompts=args.num_prompts, samples_per_prompt=args.samples_per_prompt, max_new_tokens=args.max_new_tokens,
        top_k=args.top_k, prompts=args.prompts, lm=args.lm, rad_q_model=args.rad_q_model, rad_v_model=args.rad_v_model,
        toxicity_judge=args.toxicity_judge, sentiment_judge=args.sentiment_judge, fluency_lm=args.fluency_lm,
        prompts_per_batch=args.prompts_per_batch, seed=args.seed, device=args.device, output=args.output,
    )  # fmt: skip
    report = run_evaluation(config)
    if report is not None:
        print((Path(args.output) / "results.md").read_text())
        print(f"wrote {args.output}/results.json and results.md")


def train(what: str, argv: list[str]) -> None:
    from transformers import HfArgumentParser

    from .training import DistillationConfig, RewardTrainingConfig, scripts

    if what == "distill":
        parser = HfArgumentParser(
            (scripts.DistillArguments, scripts.ModelArguments, scripts.DataArguments, DistillationConfig)
        )
        parser.prog = "rad-q train distill"
        d, model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
        scripts.distill(model_args, data_args, training_args, d.teacher, d.task, d.base_model)
        scripts.end_distributed()
        return
    parser = HfArgumentParser((scripts.ModelArguments, scripts.DataArguments, RewardTrainingConfig))
    parser.prog = f"rad-q train {what}"
    run = scripts.train_toxicity if what == "toxicity" else scripts.train_sentiment
    run(*parser.parse_args_into_dataclasses(argv))
    scripts.end_distributed()


if __name__ == "__main__":
    sys.exit(main())
