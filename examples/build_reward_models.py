"""Build untrained RAD-Q and RAD-V reward models on a causal backbone, save them and load them back.

    python examples/build_reward_models.py --backbone smollm2-135m --num_layers 6 --output_dir outputs/untrained
    python examples/build_reward_models.py --backbone gpt2 --labels toxicity severe_toxicity obscene \
        identity_attack insult threat sexual_explicit            # with the Hub

The heads are freshly initialised: train them before steering anything. The saved folders load with
`AutoModel.from_pretrained(path)` after `import rad_q_hf`, or with `trust_remote_code=True` without it.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, HfArgumentParser

import rad_q_hf
from rad_q_hf.embedded import is_embedded, resolve


@dataclass
class BuildArguments:
    backbone: str = field(default="smollm2-135m", metadata={"help": "Embedded name, local folder or Hub id."})
    labels: list[str] = field(default_factory=lambda: ["toxicity"], metadata={"help": "Reward output names."})
    num_layers: int | None = field(default=6, metadata={"help": "Keep the backbone's first N layers."})
    use_baseline: bool = field(default=True, metadata={"help": "RAD-Q: add the per-prefix baseline bᵀh_t."})
    output_dir: str = field(default="outputs/untrained", metadata={"help": "Where the two folders go."})


def main(args: BuildArguments) -> None:
    path = resolve(args.backbone) if is_embedded(args.backbone) else args.backbone
    tokenizer = AutoTokenizer.from_pretrained(path)
    models = {
        "rad-q": rad_q_hf.RadQForRewardModeling.from_backbone(
            path, labels=args.labels, num_layers=args.num_layers, use_baseline=args.use_baseline
        ),
        "rad-v": rad_q_hf.RadVForRewardModeling.from_backbone(path, labels=args.labels, num_layers=args.num_layers),
    }
    batch = tokenizer(["A short test sentence."], return_tensors="pt")
    for name, model in models.items():
        out_dir = Path(args.output_dir) / name
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)  # the decoding processor compares it with the LM's tokenizer
        loaded = AutoModel.from_pretrained(out_dir).eval()
        with torch.no_grad():
            same = torch.equal(loaded(**batch).rewards, model.eval()(**batch).rewards)
        n_params = sum(p.numel() for p in loaded.parameters())
        print(
            f"{name}: {type(loaded).__name__}, {n_params / 1e6:.1f}M parameters, saved to {out_dir}, reload identical: {same}"
        )


if __name__ == "__main__":
    (arguments,) = HfArgumentParser(BuildArguments).parse_args_into_dataclasses()
    main(arguments)
