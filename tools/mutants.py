"""Hand-written mutation testing of the core: does some fast test fail when the code is subtly wrong?

Each mutant replaces one snippet of one file with a plausible bug (a dropped weight, a flipped sign, a fixed
instead of a random token, ...). The package and tests are copied to a temporary folder, the mutant is applied
there and its target tests run (`pytest -x`); the mutant is *killed* when a test fails. Not run in CI (minutes):

    OMP_NUM_THREADS=1 python tools/mutants.py               # all mutants (about 15 min on 2 busy cores)
    OMP_NUM_THREADS=1 python tools/mutants.py -k prior      # those whose name contains "prior"
    OMP_NUM_THREADS=1 python tools/mutants.py --list

Exit status 1 if a mutant survives (or a snippet no longer matches its file: update the mutant with the code).
Mutants marked `equivalent` cannot change any result (kept to document why they need no test) and are not run.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Each mutant runs the fast tests that exercise its code (the whole fast suite per mutant takes too long on a shared
# CPU); a mutant counts as surviving these selections, which the score reports.
MODEL_LOSS = ["tests/test_modeling.py", "-k", "loss or padding or shapes"]
RAD_Q_HEAD = ["tests/test_modeling.py", "-k", "rad_q or baseline or frozen"]
FROZEN = ["tests/test_modeling.py", "tests/test_training.py", "-k", "frozen"]
TRAINING = [
    "tests/test_training.py",
    "-k",
    "vectorised or baseline_prior or regulariser or uniformly or eval_logs or distillation_loss or per_source",
]
OPTIMIZER = ["tests/test_training.py", "-k", "weight_decay or head_learning_rate or gradient_accumulation"]
LORA = ["tests/test_training.py", "-k", "lora or head_learning_rate"]
SCORING = ["tests/test_scoring.py"]
SCORING_AND_TRAINING = ["tests/test_scoring.py", *TRAINING]


@dataclass
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: list[str]
    equivalent: str = ""  # why the mutant cannot change behaviour (not run)


# fmt: off
MUTANTS = [
    # ---- the cumulative length-weighted MSE (modeling_rad_v.py)
    Mutant("mse: uniform instead of length weights", "rad_q_hf/modeling_rad_v.py",
           "t = mask.cumsum(-1) * mask", "t = mask", MODEL_LOSS),
    Mutant("mse: mean over labels instead of sum", "rad_q_hf/modeling_rad_v.py",
           ".pow(2).sum(-1)  # (B, T)", ".pow(2).mean(-1)  # (B, T)", MODEL_LOSS),
    Mutant("mse: absolute instead of squared error", "rad_q_hf/modeling_rad_v.py",
           "labels[:, None, :].to(rewards.dtype)).pow(2)", "labels[:, None, :].to(rewards.dtype)).abs()", MODEL_LOSS),
    Mutant("mse: weights normalised over the batch", "rad_q_hf/modeling_rad_v.py",
           "t / t.sum(-1, keepdim=True).clamp(min=1)", "t / t.sum().clamp(min=1)", MODEL_LOSS),
    Mutant("mse: sum over texts instead of mean", "rad_q_hf/modeling_rad_v.py",
           "return (weights * sq_err).sum(-1).mean()", "return (weights * sq_err).sum()", MODEL_LOSS),
    Mutant("rad-v: loss ignores the attention mask", "rad_q_hf/modeling_rad_v.py",
           "attention_mask[:, -input_ids.shape[1] :] if attention_mask is not None else torch.ones_like(input_ids)",
           "torch.ones_like(input_ids)", MODEL_LOSS),
    # ---- RAD-Q's teacher-forced loss and head (modeling_rad_q.py)
    Mutant("rad-q: loss counts the pad after the last token", "rad_q_hf/modeling_rad_q.py",
           "mask[:, :-1] * mask[:, 1:])", "mask[:, :-1])", MODEL_LOSS),
    Mutant("rad-q: queries the current instead of the next token", "rad_q_hf/modeling_rad_q.py",
           "torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1)[..., None]", "input_ids[..., None]", MODEL_LOSS),
    Mutant("rad-q: baseline dropped from the rewards", "rad_q_hf/modeling_rad_q.py",
           "rewards = self._token_scores(hidden, query_ids) + baselines[..., None]",
           "rewards = self._token_scores(hidden, query_ids)", RAD_Q_HEAD),
    Mutant("rad-q: embeddings not frozen", "rad_q_hf/modeling_rad_q.py",
           "        if self.config.freeze_embeddings:\n", "        if False:\n", FROZEN),
    Mutant("rad-q: W starts random", "rad_q_hf/modeling_rad_q.py",
           "            init.zeros_(module.weight)\n", "            init.normal_(module.weight)\n", RAD_Q_HEAD),
    # ---- the regression trainer (training/reward_trainer.py)
    Mutant("reward prior: weight ignored", "rad_q_hf/training/reward_trainer.py",
           'losses["loss"] + c * losses["prior"]', 'losses["loss"] + losses["prior"]', TRAINING),
    Mutant("reward prior: weight flipped", "rad_q_hf/training/reward_trainer.py",
           'losses["loss"] + c * losses["prior"]', 'losses["loss"] - c * losses["prior"]', TRAINING),
    Mutant("reward prior: dropped from the loss", "rad_q_hf/training/reward_trainer.py",
           'losses["loss"] = losses["loss"] + c * losses["prior"]', 'losses["loss"] = losses["loss"]', TRAINING),
    Mutant("reward prior: a fixed token instead of a uniform one", "rad_q_hf/training/reward_trainer.py",
           "torch.randint(config_of(unwrapped).vocab_size, (B, T + 1, 1), device=input_ids.device)",
           "torch.full((B, T + 1, 1), 3, device=input_ids.device)", TRAINING),
    Mutant("reward prior: drawn from a smaller range", "rad_q_hf/training/reward_trainer.py",
           "torch.randint(config_of(unwrapped).vocab_size, (B, T + 1, 1)",
           "torch.randint(config_of(unwrapped).vocab_size - 1, (B, T + 1, 1)", TRAINING),
    Mutant("reward prior: also on in evaluation", "rad_q_hf/training/reward_trainer.py",
           "if c > 0 and model.training:", "if c > 0:", TRAINING),
    Mutant("prior: includes the baseline", "rad_q_hf/training/reward_trainer.py",
           "token_part = out.rewards[..., column] - out.baselines", "token_part = out.rewards[..., column]",
           TRAINING),
    Mutant("prior: reads the observed token's column", "rad_q_hf/training/reward_trainer.py",
           "losses[\"prior\"] = baseline_prior(out, mask)", "losses[\"prior\"] = baseline_prior(out, mask, 0)",
           TRAINING),
    Mutant("prior: mean over every column, pads included", "rad_q_hf/training/reward_trainer.py",
           "return (token_part.pow(2).sum(-1) * mask).sum() / mask.sum().clamp(min=1)",
           "return token_part.pow(2).sum(-1).mean()", TRAINING),
    Mutant("prior: sum over labels replaced by mean", "rad_q_hf/training/reward_trainer.py",
           "return (token_part.pow(2).sum(-1) * mask)", "return (token_part.pow(2).mean(-1) * mask)", TRAINING),
    Mutant("optimizer: weight decay on every group", "rad_q_hf/training/reward_trainer.py",
           '"weight_decay": self.args.weight_decay if decays else 0.0', '"weight_decay": self.args.weight_decay',
           OPTIMIZER),
    Mutant("optimizer: heads at the backbone's rate", "rad_q_hf/training/reward_trainer.py",
           '"lr": self.args.head_learning_rate if head else self.args.learning_rate',
           '"lr": self.args.learning_rate', OPTIMIZER),
    Mutant("trainer: loss taken as already scaled for GA", "rad_q_hf/training/reward_trainer.py",
           "loss_is_scaled_for_ga = False", "loss_is_scaled_for_ga = True", OPTIMIZER),
    Mutant("trainer: loss kwargs assumed (transformers < 5.19 path)", "rad_q_hf/training/reward_trainer.py",
           "self.model_accepts_loss_kwargs = False", "self.model_accepts_loss_kwargs = True", OPTIMIZER,
           equivalent="forward has no **kwargs, and 5.19+ follows loss_is_scaled_for_ga whatever this flag says"),
    Mutant("trainer: eval reports the loss with the prior", "rad_q_hf/training/reward_trainer.py",
           'loss = losses["regression"].detach()', 'loss = losses["loss"].detach()', TRAINING,
           equivalent="the prior is only drawn in train mode, so in prediction_step loss == regression"),
    Mutant("trainer: eval predictions at the first token", "rad_q_hf/training/reward_trainer.py",
           'last_token(losses["rewards"], inputs["attention_mask"])', 'losses["rewards"][:, 0]', TRAINING),
    # ---- distillation (training/distillation_trainer.py)
    Mutant("distil prior: weight ignored", "rad_q_hf/training/distillation_trainer.py",
           'loss = loss + c * losses["prior"]', 'loss = loss + losses["prior"]', TRAINING),
    Mutant("distil prior: weight flipped", "rad_q_hf/training/distillation_trainer.py",
           'loss = loss + c * losses["prior"]', 'loss = loss - c * losses["prior"]', TRAINING),
    Mutant("distil prior: dropped from the loss", "rad_q_hf/training/distillation_trainer.py",
           'loss = loss + c * losses["prior"]', "loss = loss", TRAINING),
    Mutant("distil prior: a fixed token instead of a uniform one", "rad_q_hf/training/distillation_trainer.py",
           "torch.randint(self.teacher.config.vocab_size, (B, T + 1, 1), device=input_ids.device)",
           "torch.full((B, T + 1, 1), 3, device=input_ids.device)", TRAINING),
    Mutant("distil prior: reads a candidate's column", "rad_q_hf/training/distillation_trainer.py",
           "column=out.rewards.shape[-1] - 1", "column=1", TRAINING),
    Mutant("distil: candidate weight ignored", "rad_q_hf/training/distillation_trainer.py",
           'self.args.candidate_weight * losses["candidates"]', 'losses["candidates"]', TRAINING),
    Mutant("distil: candidates read off by one column", "rad_q_hf/training/distillation_trainer.py",
           "out.rewards[:, :, :, 1 : 1 + k]", "out.rewards[:, :, :, 0:k]", TRAINING),
    Mutant("distil: masked mean over every entry", "rad_q_hf/training/distillation_trainer.py",
           "return ((pred - target).pow(2) * mask).sum() / mask.sum().clamp(min=1)",
           "return ((pred - target).pow(2) * mask).mean()", TRAINING),
    Mutant("distil: bottom-k instead of top-k candidates", "rad_q_hf/training/distillation_trainer.py",
           "candidates = logits.topk(k, dim=-1).indices", "candidates = logits.topk(k, dim=-1, largest=False).indices",
           TRAINING),
    # ---- LoRA (training/adapters.py)
    Mutant("lora: heads frozen", "rad_q_hf/training/adapters.py",
           'param.requires_grad_(".lora_" in name or is_head_parameter(name))',
           'param.requires_grad_(".lora_" in name)', LORA),
    Mutant("lora: merged checkpoint without the update", "rad_q_hf/training/adapters.py",
           'state[f"{name}.weight"] + delta.to(state[f"{name}.weight"].dtype)', 'state[f"{name}.weight"]', LORA),
    # ---- scoring (scoring.py)
    Mutant("scoring: last token = number of real tokens − 1", "rad_q_hf/scoring.py",
           "last = (torch.arange(T, device=attention_mask.device) * attention_mask.long()).argmax(1)",
           "last = attention_mask.long().sum(1) - 1", SCORING),
    Mutant("scoring: rad-q prefixes read at their own column", "rad_q_hf/scoring.py",
           "src = prev[:, :-1, None]", "src = prev[:, 1:, None]", SCORING_AND_TRAINING),
    Mutant("scoring: candidates positioned by column", "rad_q_hf/scoring.py",
           "position_ids = torch.cat([text_pos, cand_pos], dim=1)",
           "position_ids = torch.arange(ids.shape[1], device=device).expand(B, -1)", SCORING_AND_TRAINING),
]
# fmt: on


def run(mutant: Mutant, root: Path) -> tuple[str, float]:
    """'killed', 'survived' or 'stale' (the snippet is not in the file, exactly once), and seconds taken."""
    path = root / mutant.path
    source = path.read_text() if path.is_file() else ""
    if source.count(mutant.old) != 1:
        return "stale", 0.0
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        for folder in ("rad_q_hf", "tests"):
            shutil.copytree(root / folder, Path(tmp) / folder, ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(root / "pyproject.toml", tmp)
        (Path(tmp) / mutant.path).write_text(source.replace(mutant.old, mutant.new))
        env = {**os.environ, "PYTHONPATH": tmp, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant.tests]
        result = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    # pytest exit 1 = a test failed; anything else (2 = collection error, ...) also counts as caught
    return ("survived" if result.returncode == 0 else "killed"), time.time() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="Only mutants whose name contains this.")
    parser.add_argument("--list", action="store_true", help="List the mutants and exit.")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="Run on another checkout, e.g. `git archive main | tar -x -C DIR`."
    )
    args = parser.parse_args()
    mutants = [m for m in MUTANTS if args.k in m.name]
    if args.list:
        for m in mutants:
            print(f"{m.name:60s} {m.path}" + (f"  [equivalent: {m.equivalent}]" if m.equivalent else ""))
        return 0
    results = {}
    for m in mutants:
        if m.equivalent:
            print(f"  equivalent  {m.name}  ({m.equivalent})", flush=True)
            continue
        status, seconds = run(m, args.root)
        results[m.name] = status
        print(f"  {status:9s}  {m.name}  ({seconds:.0f} s)", flush=True)
    killed = sum(s == "killed" for s in results.values())
    ran = sum(s != "stale" for s in results.values())
    print(f"mutation score: {killed}/{ran} killed", end="")
    survivors = [n for n, s in results.items() if s == "survived"]
    stale = [n for n, s in results.items() if s == "stale"]
    print(f"; survived: {survivors}" if survivors else "", end="")
    print(f"; stale (snippet not in the code): {stale}" if stale else "")
    return 1 if survivors or stale else 0


if __name__ == "__main__":
    sys.exit(main())
