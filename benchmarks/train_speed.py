"""Training throughput of the reward models against a plain forward + backward of the same backbone.

    python benchmarks/train_speed.py                              # embedded SmolLM2-135M, first 6 layers, CPU
    python benchmarks/train_speed.py --device cuda --num_layers 30 --batch_size 32 --seq_len 128
    python benchmarks/train_speed.py --backbone benchmarks/configs/smollm2-135m.json --device cuda  # random weights

On the same batch of real text (B rows of T tokens, right-padded lengths between T/2 and T), each row times one
training step's forward + backward (no optimizer step: the parameter sets are the same up to the tiny heads):
    baseline   the backbone (`AutoModel`) with the mean of its last hidden states as the loss
    RAD-V      `RewardRegressionTrainer.compute_loss` (value head, cumulative MSE)
    RAD-Q      the same trainer on RAD-Q (BOS + text, observed-token queries; frozen E), without and with the prior
    distil     `DistillationTrainer` on the observed tokens (RAD-V teacher forward included)
    trunk      (`--trunk_tap_layer L`) the same trainer on RAD-Q on the LM's own trunk: the frozen LM's forward up to
               layer L (no backward through it) plus the trained top of `--trunk_blocks` own blocks
It prints text tokens per second and the ratio to the baseline measured in the same run (≥ 0.9 is the target), and
writes JSON and markdown to --output_dir.
"""

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, HfArgumentParser

from rad_q_hf import RadQForRewardModeling, RadVForRewardModeling
from rad_q_hf.data import RewardDataCollator
from rad_q_hf.embedded import is_embedded, resolve
from rad_q_hf.training import DistillationConfig, DistillationTrainer, RewardRegressionTrainer, RewardTrainingConfig

TEXT = (
    "The city council met on Tuesday evening to discuss the new budget, and after a long debate about schools, "
    "roads and the future of the public library, the members finally agreed that they would vote again next week "
    "once the auditors had published their report on last year's spending, which many residents had asked to see."
)


@dataclass
class TrainSpeedArguments:
    backbone: str = field(default="smollm2-135m", metadata={"help": "Embedded name, local folder or Hub id."})
    num_layers: int | None = field(default=6, metadata={"help": "Keep the backbone's first N layers (None: all)."})
    batch_size: int = field(default=8, metadata={"help": "Rows per step."})
    seq_len: int = field(default=64, metadata={"help": "Longest row, in tokens."})
    repeats: int = field(default=5, metadata={"help": "Timed steps per row of the table (the median is kept)."})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda."})
    output_dir: str = field(default="benchmarks/results", metadata={"help": "Where JSON and markdown go."})
    name: str = field(default="", metadata={"help": "Suffix of the output files (train_speed_<device>[_<name>])."})
    trunk_tap_layer: int | None = field(
        default=None, metadata={"help": "Also time trunk reward models tapping the full LM at this layer."}
    )
    trunk_blocks: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "Their own-block counts."})


def timed(cases: dict, repeats: int, device: str, models) -> dict[str, float]:
    """Median seconds per call of each case, interleaving the cases so that drift hits them all alike."""
    times = {name: [] for name in cases}
    for r in range(repeats + 2):  # two warm-up rounds
        for name, step in cases.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            if r >= 2:
                times[name].append(time.perf_counter() - start)
            for model in models:
                model.zero_grad(set_to_none=True)
    return {name: statistics.median(t) for name, t in times.items()}


def text_ids(args: TrainSpeedArguments, path: str) -> list[int]:
    if path.endswith(".json"):  # random weights: random tokens are as good as text for timing
        vocab = AutoConfig.from_pretrained(path).vocab_size
        return torch.randint(3, vocab, (8 * args.seq_len + 7 * args.batch_size,)).tolist()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return tokenizer(TEXT * 8, add_special_tokens=False)["input_ids"]


def reward_model(cls, path: str, num_layers: int | None):
    """A reward model on a pretrained backbone, or with random weights from a config JSON (`benchmarks/configs/`)."""
    if not path.endswith(".json"):
        return cls.from_backbone(path, ["score"], num_layers)
    backbone = AutoConfig.from_pretrained(path)
    return cls(cls.config_class(backbone_config=backbone, label_names=["score"], num_layers=num_layers))


def trunk_step(trainer, trunk, batch) -> None:
    trainer.compute_loss(trunk, batch).backward()


def main(args: TrainSpeedArguments) -> dict:
    path = str(resolve(args.backbone)) if is_embedded(args.backbone) else args.backbone
    torch.manual_seed(0)
    ids = text_ids(args, path)
    ids = ids * (1 + (args.seq_len + 7 * args.batch_size) // len(ids))  # long enough for every row's window
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.seq_len // 2, args.seq_len + 1, (args.batch_size,), generator=g).tolist()
    rows = [{"input_ids": ids[i * 7 : i * 7 + n], "labels": [float(i % 2)]} for i, n in enumerate(lengths)]
    batch = {k: v.to(args.device) for k, v in RewardDataCollator(pad_token_id=0)(rows).items()}
    n_tokens = int(batch["attention_mask"].sum())

    torch.manual_seed(0)
    rad_v = reward_model(RadVForRewardModeling, path, args.num_layers).to(args.device).train()
    rad_q = reward_model(RadQForRewardModeling, path, args.num_layers).to(args.device).train()
    backbone = AutoModel.from_config(rad_v.config.backbone_config).to(args.device).train()
    backbone.load_state_dict(rad_v.backbone.state_dict())
    common = dict(output_dir="/tmp/rad_q_hf_train_speed", report_to="none", use_cpu=args.device == "cpu")
    trainer = RewardRegressionTrainer(rad_v, RewardTrainingConfig(**common))
    prior = RewardRegressionTrainer(rad_q, RewardTrainingConfig(**common, regularizer_weight=1.0))
    teacher = reward_model(RadVForRewardModeling, path, args.num_layers)  # frozen by the trainer
    distil = DistillationTrainer(rad_q, teacher, DistillationConfig(**common))

    def baseline():
        backbone(**{k: batch[k] for k in ("input_ids", "attention_mask")}).last_hidden_state.mean().backward()

    cases = {
        "baseline (backbone fwd+bwd)": baseline,
        "RAD-V": lambda: trainer.compute_loss(rad_v, batch).backward(),
        "RAD-Q": lambda: trainer.compute_loss(rad_q, batch).backward(),
        "RAD-Q + prior": lambda: prior.compute_loss(rad_q, batch).backward(),
        "distil RAD-V → RAD-Q (observed)": lambda: distil.compute_loss(rad_q, batch).backward(),
    }
    models = [rad_v, rad_q, backbone]
    if args.trunk_tap_layer is not None:
        from transformers import AutoModelForCausalLM

        from rad_q_hf import RadQTrunkForRewardModeling

        if path.endswith(".json"):
            lm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
        else:
            lm = AutoModelForCausalLM.from_pretrained(path)
        lm = lm.to(args.device).eval()
        for n in args.trunk_blocks:
            trunk = RadQTrunkForRewardModeling.from_lm(lm, tap_layer=args.trunk_tap_layer, num_blocks=n).train()
            cases[f"RAD-Q on the trunk (L={args.trunk_tap_layer}, {n} blocks)"] = partial(
                trunk_step, trainer, trunk, batch
            )
            models.append(trunk)
    seconds = timed(cases, args.repeats, args.device, models)
    results = {name: {"ms_per_step": 1000 * t, "tokens_per_s": n_tokens / t} for name, t in seconds.items()}
    base = results["baseline (backbone fwd+bwd)"]["tokens_per_s"]
    lines = [
        f"Backbone {args.backbone} ({args.num_layers or 'all'} layers), B={args.batch_size}, "
        f"{n_tokens} text tokens, device {args.device}, fp32, median of {args.repeats}.",
        "",
        "| step | ms/step | tokens/s | ratio to baseline |",
        "|---|---:|---:|---:|",
    ]
    for name, r in results.items():
        r["ratio"] = r["tokens_per_s"] / base
        lines.append(f"| {name} | {r['ms_per_step']:.1f} | {r['tokens_per_s']:.0f} | {r['ratio']:.2f} |")
    print("\n".join(lines))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"train_speed_{args.device}" + (f"_{args.name}" if args.name else "")
    (out / f"{stem}.json").write_text(json.dumps({"args": asdict(args), "results": results}, indent=2))
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    main(*HfArgumentParser(TrainSpeedArguments).parse_args_into_dataclasses())
