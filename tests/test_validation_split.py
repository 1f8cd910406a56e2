"""The validation split carved from train, class balancing, and the trainer's learning-curve logs."""

import json

import pytest
from conftest import build_reward_model
from datasets import Dataset, DatasetDict

from rad_q_hf import data as rdata
from rad_q_hf.training import RewardTrainingConfig
from rad_q_hf.training.scripts import DataArguments, ModelArguments, run_regression

WORDS = ["good", "lovely", "kind", "great", "stupid", "idiot"]


def toy(n: int, prefix: str) -> Dataset:
    texts = [f"{prefix} {WORDS[i % len(WORDS)]} {i}" for i in range(n)]
    labels = [[float(WORDS[i % len(WORDS)] in ("stupid", "idiot"))] for i in range(n)]
    return Dataset.from_dict({"text": texts, "labels": labels, "source": ["a" if i % 2 else "b" for i in range(n)]})


def test_validation_is_carved_from_train_by_a_salted_hash():
    ds = DatasetDict({"train": toy(400, "train"), "test": toy(50, "test")})
    out = rdata.with_validation(ds, 10)
    train, validation = set(out["train"]["text"]), set(out["validation"]["text"])
    assert not train & validation and train | validation == set(ds["train"]["text"])
    assert out["test"]["text"] == ds["test"]["text"]  # the reported held-out split does not move
    assert validation == {t for t in ds["train"]["text"] if rdata.held_out(t, 10, rdata.VALIDATION_SALT)}
    assert 15 <= len(validation) <= 70
    # Independent of the test hash: the unsalted 10 % bucket is a different set of texts.
    assert validation != {t for t in ds["train"]["text"] if rdata.held_out(t, 10)}
    assert rdata.with_validation(ds, 0) is ds and rdata.with_validation(out, 10) is out


def test_min_words_keeps_long_train_and_validation_texts_and_the_whole_test_split():
    texts = [" ".join(["word"] * (1 + i % 12)) + f" {i}" for i in range(600)]  # 2 to 13 words
    train = Dataset.from_dict({"text": texts, "labels": [[float(i % 2)] for i in range(600)]})
    ds = rdata.with_validation(DatasetDict({"train": train, "test": toy(30, "test")}), 10)
    out = rdata.min_words(ds, 8)
    for split in ("train", "validation"):
        assert out[split]["text"] == [t for t in ds[split]["text"] if len(t.split()) >= 8]
        assert 0 < len(out[split]) < len(ds[split])
    assert out["test"]["text"] == ds["test"]["text"]  # what is reported is never filtered
    # The same hash bucket: a long validation text was never a train text of the unfiltered stage before it.
    assert set(out["validation"]["text"]) <= set(ds["validation"]["text"])
    assert rdata.min_words(ds, 0) is ds
    with pytest.raises(rdata.DataError, match="No training text has 99 or more words.*--min_words"):
        rdata.min_words(ds, 99)


def test_run_regression_trains_and_validates_on_min_words_texts_only(tokenizer, tmp_path, monkeypatch):
    from rad_q_hf.training import scripts

    seen = {}

    class Captured(Exception):
        pass

    def capture(model, args, train_dataset, eval_dataset, **kwargs):
        seen.update(train=train_dataset, **eval_dataset)
        raise Captured

    monkeypatch.setattr(scripts, "RewardRegressionTrainer", capture)
    short, long = toy(200, "s"), toy(200, "a much longer text")  # 3 and 6 words
    from datasets import concatenate_datasets

    dataset = DatasetDict({"train": concatenate_datasets([short, long]), "test": toy(20, "t")})
    model = build_reward_model("rad_v", "gpt2", len(tokenizer), labels=("toxicity",))
    data_args = DataArguments(validation_percent=20, min_words=5, max_eval_samples=None)
    args = RewardTrainingConfig(str(tmp_path), max_steps=1, report_to="none", use_cpu=True)
    with pytest.raises(Captured):
        run_regression(ModelArguments(method="rad-v"), data_args, args, dataset, ["toxicity"], model, tokenizer)
    assert len(seen["train"]) + len(seen["validation"]) == 200 and len(seen["validation"]) > 10
    assert len(seen["test"]) == 20


def test_balance_classes_oversamples_the_rarer_class_per_source():
    ds = toy(60, "t")  # 1 in 3 texts toxic
    out = rdata.balance_classes(ds, 1.0, seed=0)
    assert out.select(range(len(ds)))["text"] == ds["text"]  # every original row kept, in order
    for source in ("a", "b"):
        flags = [row[0] >= 0.5 for row, s in zip(out["labels"], out["source"], strict=True) if s == source]
        assert sum(flags) == len(flags) - sum(flags)
    half = rdata.balance_classes(ds, 0.5, seed=0)
    assert len(half) == len(ds)  # 20 toxic of 60 is already half of the 40 others
    assert rdata.balance_classes(ds, 1.0, seed=0)["text"] == out["text"]  # seeded


def test_training_logs_validation_and_test_curves(tokenizer, tmp_path):
    model = build_reward_model("rad_v", "gpt2", len(tokenizer), labels=("toxicity",))
    dataset = DatasetDict({"train": toy(120, "train"), "test": toy(24, "test")})
    data_args = DataArguments(validation_percent=20, balance_classes=1.0, max_eval_samples=None)
    args = RewardTrainingConfig(
        str(tmp_path), max_steps=4, per_device_train_batch_size=8, eval_strategy="steps", eval_steps=2,
        report_to="none", use_cpu=True, learning_rate=1e-3, save_strategy="no",
    )  # fmt: skip
    metrics = run_regression(ModelArguments(method="rad-v"), data_args, args, dataset, ["toxicity"], model, tokenizer)
    assert "eval_auc" in metrics and "eval_mse" in metrics  # the report stays on test, under the usual names
    validation = json.loads((tmp_path / "validation_results.json").read_text())
    assert {"validation_auc", "validation_mse"} <= set(validation) and validation != metrics
    state = json.loads((tmp_path / "trainer_state.json").read_text())
    curve = [(e["step"], e["eval_validation_auc"]) for e in state["log_history"] if "eval_validation_auc" in e]
    assert [step for step, _ in curve] == [2, 4]
    assert [e["step"] for e in state["log_history"] if "eval_test_mse" in e] == [2, 4]
    # Resuming this folder with another learning rate is refused (it would resume the finished checkpoint, train
    # nothing, and report the old model); more steps is training on.
    from dataclasses import replace

    with pytest.raises(ValueError, match=r"training.learning_rate: 0.001 -> 0.01.*another --output_dir"):
        run_regression(ModelArguments(method="rad-v"), data_args, replace(args, learning_rate=1e-2), dataset,
                       ["toxicity"], model, tokenizer)  # fmt: skip
    from rad_q_hf.training.scripts import check_run_record

    check_run_record(ModelArguments(method="rad-v"), data_args, replace(args, max_steps=8))


def test_learning_curves_from_log_history(tmp_path):
    from rad_q_hf.evaluation.learning_curves import learning_curves, plot_learning_curves, read_log_history

    history = [
        {"step": 10, "loss": 0.3},
        {"step": 20, "eval_validation_auc": 0.7, "eval_validation_mse": 0.2},
        {"step": 20, "eval_test_auc": 0.65, "eval_test_mse": 0.22},
        {"step": 40, "eval_validation_auc": 0.8, "eval_validation_mse": float("nan")},
        {"step": 40, "eval_auc": 0.9, "eval_runtime": 3.0},
    ]
    curves = learning_curves(history)
    assert curves == {
        "held_out_auc": [(40, 0.9)],
        "test_auc": [(20, 0.65)],
        "test_mse": [(20, 0.22)],
        "train_loss": [(10, 0.3)],
        "validation_auc": [(20, 0.7), (40, 0.8)],
        "validation_mse": [(20, 0.2)],
    }
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-40").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text(json.dumps({"log_history": history[:1]}))
    (tmp_path / "checkpoint-40" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert learning_curves(read_log_history(tmp_path)) == curves  # the latest checkpoint's, by step number
    plot_learning_curves({"run": curves}, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_best_checkpoint_is_picked_on_validation_among_saved_ones(tmp_path):
    from rad_q_hf.evaluation.learning_curves import best_checkpoint

    history = [
        {"step": 10, "eval_validation_accuracy": 0.80, "eval_test_accuracy": 0.99},
        {"step": 20, "eval_validation_accuracy": 0.95},  # best, but its checkpoint was rotated away
        {"step": 30, "eval_validation_accuracy": 0.90, "eval_test_accuracy": 0.50},
    ]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    for step in (10, 30):
        (tmp_path / f"checkpoint-{step}").mkdir()
    assert best_checkpoint(tmp_path).name == "checkpoint-30"  # never the test split's favourite
    assert best_checkpoint(tmp_path, "test_accuracy").name == "checkpoint-10"
    with pytest.raises(FileNotFoundError, match="validation_auc"):
        best_checkpoint(tmp_path, "validation_auc")


def test_checkpoint_step_and_what_was_logged_at_it(tmp_path):
    from rad_q_hf.evaluation.learning_curves import best_checkpoint, checkpoint_step, logged_at_step

    assert checkpoint_step(tmp_path / "checkpoint-1950") == 1950
    for odd in ("checkpoint-final", "tmp-checkpoint-50", "stage-2-sst2"):
        with pytest.raises(ValueError, match="checkpoint-N"):
            checkpoint_step(tmp_path / odd)
    history = [
        {"step": 50, "loss": 0.2},
        {"step": 50, "eval_validation_auc": 0.8, "eval_validation_mse": 0.1},
        {"step": 50, "eval_test_auc": 0.7},
        {"step": 100, "eval_validation_auc": 0.9},
    ]
    assert logged_at_step(history, 50) == {
        "step": 50, "loss": 0.2, "eval_validation_auc": 0.8, "eval_validation_mse": 0.1, "eval_test_auc": 0.7,
    }  # fmt: skip
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    for name in ("checkpoint-50", "checkpoint-100", "tmp-checkpoint-150", "checkpoint-extra"):
        (tmp_path / name).mkdir()
    assert best_checkpoint(tmp_path, "validation_auc").name == "checkpoint-100"  # odd folder names are not runs'


def test_shipped_toxicity_recipe_picks_its_checkpoint_on_validation_auc(tmp_path, monkeypatch):
    """`ship_models.py`: a toxicity recipe with a validation split evaluates and saves at the same steps, and ships
    the checkpoint with the best validation ROC AUC, reporting that checkpoint's *test* metrics."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "examples"))
    ship_models = __import__("ship_models")
    monkeypatch.setitem(
        ship_models.TOXICITY_RECIPES, "rad-v-toxicity", ship_models.ToxicityRecipe(-1, 1, "cosine", 50, 5.0)
    )
    args = ship_models.ShipArguments(work_dir=str(tmp_path))
    _, _, data_args, config = ship_models.recipe("rad-v-toxicity", args)
    assert (config.max_steps, config.num_train_epochs, config.warmup_steps) == (-1, 1, 50)
    assert config.eval_steps == config.save_steps == 50 and config.save_total_limit == 8
    assert data_args.validation_percent == 5.0 and data_args.max_eval_samples == 250
    old = ship_models.ToxicityRecipe(500, 1, "linear", 30, 0.0)  # the recipe shipped before 2026-11-28
    monkeypatch.setitem(ship_models.TOXICITY_RECIPES, "rad-q-toxicity", old)
    _, _, data_args, config = ship_models.recipe("rad-q-toxicity", args)
    assert config.max_steps == 500 and data_args.validation_percent == 0 and config.eval_strategy.value == "no"

    history = [
        {"step": 50, "eval_validation_auc": 0.90, "eval_test_auc": 0.60, "eval_test_mse": 0.3},
        {"step": 100, "eval_validation_auc": 0.85, "eval_test_auc": 0.80, "eval_test_mse": 0.2},
    ]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    for step in (50, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
    checkpoint, results = ship_models.picked_checkpoint(tmp_path, "validation_auc")
    assert checkpoint.name == "checkpoint-50"
    assert results == {"eval_auc": 0.60, "eval_mse": 0.3, "step": 50, "eval_validation_auc": 0.90}
    sys.modules.pop("ship_models", None)
