"""The training example scripts end to end on a tiny backbone: `accelerate launch` with 2 CPU processes, resume,
sentiment stages and distillation; each final folder loads with `AutoModel.from_pretrained`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import llama_config
from transformers import AutoModel, AutoTokenizer, LlamaForCausalLM

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["good", "lovely", "kind", "great", "awful", "stupid", "idiot", "terrible", "the", "a", "movie", "food"]


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory, tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tiny-lm")
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(len(tokenizer))).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data")
    g = torch.Generator().manual_seed(0)
    files = []
    for name, n in (("train", 64), ("eval", 16)):
        rows = []
        for _ in range(n):
            words = [WORDS[int(i)] for i in torch.randint(len(WORDS), (6,), generator=g)]
            rows.append({"text": " ".join(words), "label": float(any(w in words for w in ("stupid", "idiot")))})
        path = folder / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows))
        files.append(path)
    return tuple(files)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


# the scripts import this checkout's rad_q_hf (not an installed copy elsewhere)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
# `--multi_gpu` picks accelerate's torchrun launcher; without CUDA the processes join a gloo group on the CPU.
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


def common(backbone: Path, train: Path, evaluation: Path, output: Path) -> list[str]:
    return [
        "--backbone", str(backbone), "--train_file", str(train), "--eval_file", str(evaluation),
        "--output_dir", str(output), "--per_device_train_batch_size", "4", "--save_steps", "2",
        "--report_to", "none", "--use_cpu", "--dataloader_pin_memory", "false", "--learning_rate", "1e-3", "--logging_steps", "1",
    ]  # fmt: skip


def test_accelerate_two_processes_train_and_resume(tiny_backbone, data_files, tmp_path):
    out = tmp_path / "rad-q"
    launch = LAUNCH
    script = [str(ROOT / "examples" / "train_jigsaw.py"), *common(tiny_backbone, *data_files, out)]
    # the README's line has no --use_cpu: without a GPU the script must still train as one distributed run
    readme_line = [a for a in script if a != "--use_cpu"]
    first = run([*launch, *readme_line, "--max_steps", "4"], tmp_path)
    assert "eval_mse" in first.stdout
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    # 2 processes × 4 rows per step: 4 steps cover half of the 64 training rows.
    assert state["train_batch_size"] == 4 and state["epoch"] == pytest.approx(0.5)
    assert first.stderr.count("train together on the CPU") == 1  # said once, by the first process
    model = AutoModel.from_pretrained(out).eval()
    assert model.config.model_type == "rad_q" and model.config.label_names == ["label"]
    assert torch.isfinite(model(torch.tensor([[0, 5, 6]]), query_ids=torch.tensor([[[7]] * 3])).rewards).all()

    second = run([*launch, *script, "--max_steps", "6"], tmp_path)  # picks up checkpoint-4
    assert "Resuming from" in second.stdout + second.stderr
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert steps == sorted(steps) and steps.count(5) == 1  # steps 5-6 ran once, after the saved 4


def test_a_launch_the_trainer_would_not_join_is_refused(monkeypatch):
    from types import SimpleNamespace

    from rad_q_hf.training.scripts import distributed_args

    monkeypatch.setenv("WORLD_SIZE", "2")
    alone = SimpleNamespace(world_size=1, use_cpu=True)  # e.g. GPUs that the processes do not see
    with pytest.raises(ValueError, match="2 independent trainings into one output folder.*--use_cpu"):
        distributed_args(alone)
    joined = SimpleNamespace(world_size=2, use_cpu=True)
    assert distributed_args(joined) is joined
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed_args(alone) is alone


def test_missing_data_folder_under_accelerate_is_one_line(tmp_path):
    launch = [*LAUNCH, str(ROOT / "examples" / "train_jigsaw.py"), "--data_dir", str(tmp_path / "missing"),
              "--output_dir", str(tmp_path / "out"), "--report_to", "none"]  # fmt: skip
    result = subprocess.run(launch, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert lines == [f"train_jigsaw.py: error: Data folder {str(tmp_path / 'missing')!r} does not exist; pass an "
                     "existing `data_dir` (`--data_dir`)."], result.stderr[-3000:]  # fmt: skip
    assert "rad_q_hf/data.py" not in result.stderr  # no traceback from the processes (the launcher has its own)


def test_sentiment_stages_and_distillation(tiny_backbone, data_files, tmp_path):
    python = [sys.executable]
    teacher = tmp_path / "rad-v"
    args = common(tiny_backbone, *data_files, teacher)
    run([*python, str(ROOT / "examples" / "train_sentiment.py"), *args, "--method", "rad-v", "--max_steps", "2"],
        tmp_path)  # fmt: skip
    rad_v = AutoModel.from_pretrained(teacher)
    assert rad_v.config.model_type == "rad_v" and (teacher / "eval_results.json").exists()

    student = tmp_path / "distilled"
    run([*python, str(ROOT / "examples" / "distill.py"), "--teacher", str(teacher), "--candidate_top_k", "3",
         *common(tiny_backbone, *data_files, student), "--max_steps", "2"], tmp_path)  # fmt: skip
    distilled = AutoModel.from_pretrained(student)
    assert distilled.config.model_type == "rad_q" and distilled.config.label_names == rad_v.config.label_names
    metrics = json.loads((student / "eval_results.json").read_text())
    # The reported loss is the distillation loss of the saved student on the eval file (not just some number).
    from rad_q_hf.data import load_labelled_file, tokenize
    from rad_q_hf.training import DistillationConfig, DistillationTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    evaluation = tokenize(load_labelled_file(data_files[1]), tokenizer).remove_columns("labels")
    config = DistillationConfig(str(tmp_path / "check"), candidate_top_k=3, report_to="none", use_cpu=True)
    lm = LlamaForCausalLM.from_pretrained(tiny_backbone)
    check = DistillationTrainer(distilled, rad_v, config, base_model=lm, eval_dataset=evaluation).evaluate()
    assert metrics["eval_loss"] == pytest.approx(check["eval_loss"], rel=1e-4)


def test_sentiment_runs_stages_in_order(tiny_backbone, tmp_path):
    """`--source amazon,sst2` on a data folder laid out like shared/data: stage 2 starts from stage 1's model."""
    data = tmp_path / "data"
    (data / "sst2").mkdir(parents=True)
    (data / "amazon_reviews").mkdir()
    lines = ["sentence\tlabel"] + [f"{w} movie the\t{int(w in ('good', 'great'))}" for w in WORDS] * 3
    (data / "sst2" / "train.tsv").write_text("\n".join(lines))
    (data / "sst2" / "dev.tsv").write_text("\n".join(lines[:10]))
    import gzip

    with gzip.open(data / "amazon_reviews" / "blitzer_multidomain_labeled.jsonl.gz", "wt") as f:
        for i, w in enumerate(WORDS * 4):
            f.write(json.dumps({"title": f"{w} {i}", "text": f"{w} food", "label": int(w in ("good", "kind"))}) + "\n")
    out = tmp_path / "rad-q-sentiment"
    args = ["--backbone", str(tiny_backbone), "--data_dir", str(data), "--source", "amazon,sst2",
            "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none",
            "--use_cpu", "--dataloader_pin_memory", "false"]  # fmt: skip
    run([sys.executable, str(ROOT / "examples" / "train_sentiment.py"), *args], tmp_path)
    assert (out / "stage-1-amazon" / "eval_results.json").exists()
    # Stage 2 starts from stage 1's heads: 2 Adam steps at lr 2e-5 move them by ~4e-5, a fresh init by ~0.02.
    stage1, stage2 = (
        AutoModel.from_pretrained(out / s).baseline_head.weight for s in ("stage-1-amazon", "stage-2-sst2")
    )
    assert 0 < (stage2 - stage1).abs().max() < 1e-3
    final = AutoModel.from_pretrained(out)
    assert final.config.label_names == ["positive"]
    # The reported accuracy is the final model's on SST-2's dev file (label 1 = a reward ≥ 0.5 at the last token).
    from rad_q_hf.scoring import text_rewards

    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    texts = [line.split("\t")[0] for line in lines[1:10]]
    labels = torch.tensor([float(line.split("\t")[1]) for line in lines[1:10]])
    predicted = text_rewards(final.eval(), tokenizer, texts)[:, 0]
    accuracy = float(((predicted >= 0.5) == (labels >= 0.5)).float().mean())
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == pytest.approx(accuracy)
    # Re-run into the same folder: the same settings reuse the finished stages; another method is refused (it would
    # have skipped both stages and reported the RAD-Q model as the RAD-V one).
    script = [sys.executable, str(ROOT / "examples" / "train_sentiment.py"), *args]
    assert "Resuming" not in run(script, tmp_path).stdout
    result = subprocess.run([*script, "--method", "rad-v"], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert result.returncode != 0 and "model.method: 'rad-q' -> 'rad-v'" in result.stderr, result.stderr[-2000:]
    assert AutoModel.from_pretrained(out).config.model_type == "rad_q"


def test_scripts_import_this_checkout(tmp_path):
    """A script's own folder, not the working directory, starts `sys.path`: ENV must put this checkout first, or the
    scripts would test whichever `rad_q_hf` is installed (another worktree's)."""
    script = tmp_path / "where.py"
    script.write_text("import rad_q_hf; print(rad_q_hf.__file__)")
    out = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert Path(out.stdout.strip()).resolve() == ROOT / "rad_q_hf" / "__init__.py", out.stderr[-2000:]


def test_evaluate_reward_model_compares_two_checkpoints(tokenizer, tmp_path):
    """`--compare_to`: the paired accuracy difference of two saved models on SST-2 dev, as their rewards give it."""
    from conftest import build_reward_model

    from rad_q_hf.evaluation.reward_quality import paired_accuracy, paired_auc
    from rad_q_hf.scoring import text_rewards

    data = tmp_path / "data" / "sst2"
    data.mkdir(parents=True)
    lines = ["sentence\tlabel"] + [f"{w} movie the\t{int(w in ('good', 'great', 'kind'))}" for w in WORDS]
    for name in ("train.tsv", "dev.tsv"):
        (data / name).write_text("\n".join(lines))
    texts, labels = [line.split("\t")[0] for line in lines[1:]], [float(line.split("\t")[1]) for line in lines[1:]]
    folders = []
    for seed in (0, 1):
        model = build_reward_model("rad_v", "llama", len(tokenizer), labels=("positive",), seed=seed)
        torch.nn.init.normal_(model.value_head.weight, std=1.0)
        with torch.no_grad():  # centre the rewards on 0.5, so that each model calls about half the texts positive
            model.value_head.bias += 0.5 - text_rewards(model, tokenizer, texts, max_length=64)[:, 0].median()
        folders.append(tmp_path / f"m{seed}")
        model.save_pretrained(folders[-1])
        tokenizer.save_pretrained(folders[-1])
    out = tmp_path / "q.json"
    args = ["--task", "sentiment", "--data_dir", str(tmp_path / "data"), "--checkpoint", str(folders[0]),
            "--compare_to", str(folders[1]), "--output", str(out)]  # fmt: skip
    run([sys.executable, str(ROOT / "examples" / "evaluate_reward_model.py"), *args], tmp_path)
    paired = json.loads(out.with_suffix(".paired.json").read_text())
    pred = [text_rewards(AutoModel.from_pretrained(f).eval(), tokenizer, texts, max_length=64)[:, 0] for f in folders]
    auc = paired_auc(*pred, labels)
    assert paired == {"a": str(folders[0]), "b": str(folders[1]), **paired_accuracy(*pred, labels), "auc": auc}
    assert auc["auc_a"] == pytest.approx(json.loads(out.read_text())["all"]["auc"])
    assert paired["only_a"] + paired["only_b"] > 0  # the two models disagree somewhere: a real comparison
    assert paired["n"] == len(WORDS) and json.loads(out.read_text())["all"]["n"] == len(WORDS)
