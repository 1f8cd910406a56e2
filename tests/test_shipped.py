"""The reward models shipped in the package: they load offline and order clear cases correctly."""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import rad_q_hf
from rad_q_hf.checkpoints import SHIPPED_DIR
from rad_q_hf.cli import main
from rad_q_hf.scoring import score_texts

NAMES = ["rad-q-toxicity", "rad-v-toxicity", "rad-q-sentiment", "rad-v-sentiment", "rad-q-trunk-toxicity",
         "rad-q-trunk-sentiment"]  # fmt: skip
MODEL_TYPES = {"rad-q": "rad_q", "rad-v": "rad_v", "rad-q-trunk": "rad_q_trunk"}
# Written for these tests (not taken from any training corpus).
TOXIC = ["You are a stupid worthless idiot and everyone hates you.", "Shut up, you disgusting moron."]
NEUTRAL = ["The meeting has been moved to Tuesday afternoon.", "Thank you for the helpful and kind explanation."]
POSITIVE = ["An absolutely wonderful film, moving and beautifully acted.", "I loved every minute of it."]
NEGATIVE = ["A dull, tedious mess with terrible acting.", "I hated it and want my money back."]


def test_all_are_shipped_within_the_size_budget():
    assert rad_q_hf.shipped_models() == sorted(NAMES)
    total = sum(f.stat().st_size for f in SHIPPED_DIR.rglob("*") if f.is_file())
    assert total <= 60 * 2**20, f"shipped models take {total / 2**20:.1f} MB"  # PyPI's limit is 100 MB
    for name in NAMES:
        card = (SHIPPED_DIR / name / "README.md").read_text()
        assert "Content warning" in card and "eval" in card.lower() and "examples/ship_models.py" in card


@pytest.fixture
def ship_models(monkeypatch):
    """`examples/ship_models.py` as a module, dropped again afterwards."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "examples"))
    yield __import__("ship_models")
    sys.modules.pop("ship_models", None)


def shipped_copy(name, tmp_path, monkeypatch):
    """A copy of a shipped model's folder to render cards into, run from `tmp_path`: a card guard that regressed then
    writes its wrong card there (and into `tmp_path/model_cards`), not over the package's and the repo's cards."""
    import shutil

    monkeypatch.chdir(tmp_path)
    return shutil.copytree(SHIPPED_DIR / name, tmp_path / name)


@pytest.mark.parametrize("name", ["rad-q-trunk-toxicity", "rad-q-trunk-sentiment"])
def test_trunk_recipe_and_card_describe_the_shipped_weights(name, ship_models, monkeypatch, tmp_path):
    """`ship_models.py`'s default recipe for a trunk model, and the command on its card, read the layer and blocks
    its weights were trained on (a card re-rendered with the flags' old defaults named tap layer 18 for a layer-24
    model); a card recipe that disagrees with the weights is refused."""
    import json
    import re

    config = json.loads((SHIPPED_DIR / name / "config.json").read_text())
    grid = ship_models.trunk_grid_arguments(name, ship_models.ShipArguments())
    assert (int(grid.layers), int(grid.blocks)) == (config["tap_layer"], config["num_blocks"])
    card = (SHIPPED_DIR / name / "README.md").read_text()
    assert re.search(rf"--trunk_tap_layer {config['tap_layer']} --trunk_blocks {config['num_blocks']} ", card)
    other = ship_models.ShipArguments(trunk_tap_layer=config["tap_layer"] - 1)
    with pytest.raises(ValueError, match="would describe another model"):
        ship_models.write_trunk_card(name, other, shipped_copy(name, tmp_path, monkeypatch), per_source={})


@pytest.mark.parametrize("name", ["rad-q-toxicity", "rad-v-toxicity", "rad-q-sentiment", "rad-v-sentiment"])
def test_lora_recipe_and_card_describe_the_shipped_rank(name, ship_models, monkeypatch, tmp_path):
    """Each LoRA model's recipe in `ship_models.py` holds the rank its shipped delta has (per stage, stacked for the
    two-stage sentiment models), and a card rendered with another `--lora_r` is refused rather than written."""
    import json

    shipped_r = json.loads((SHIPPED_DIR / name / "delta.json").read_text())["lora"]["r"]
    r = ship_models.lora_rank(name, ship_models.ShipArguments())
    assert shipped_r == (2 * r if name.endswith("sentiment") else r)
    card = (SHIPPED_DIR / name / "README.md").read_text()
    assert f"LoRA r={r}, alpha={2 * r} on" in card
    other = ship_models.ShipArguments(lora_r=r + 8)
    with pytest.raises(ValueError, match="would describe another model|the recipe says"):
        ship_models.write_card(name, other, shipped_copy(name, tmp_path, monkeypatch), per_source={})


@pytest.mark.parametrize("name", NAMES)
def test_cards_are_what_their_recipe_and_stored_evaluation_render(name, ship_models, monkeypatch, tmp_path):
    """Each shipped card (and its `model_cards/` copy) is exactly what `ship_models.py --cards_only` renders from
    the model's recipe, the card template and its stored `per_source.json`: a card edited by hand, or a template or
    table change that was not re-rendered, fails here."""
    from pathlib import Path

    repo = Path(__file__).parents[1]
    ship_models.document_stored(name, ship_models.ShipArguments(), shipped_copy(name, tmp_path, monkeypatch))
    rendered = (tmp_path / name / "README.md").read_text()
    assert rendered == (SHIPPED_DIR / name / "README.md").read_text()
    assert rendered == (repo / "model_cards" / f"{name}.md").read_text()


@pytest.fixture(scope="module", params=NAMES)
def shipped(request):
    path = rad_q_hf.default_checkpoint(request.param)
    return request.param, AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_shipped_model_orders_clear_cases(shipped):
    name, model, tokenizer = shipped
    assert model.config.model_type == MODEL_TYPES[name.rsplit("-", 1)[0]]
    high, low = (TOXIC, NEUTRAL) if name.endswith("toxicity") else (POSITIVE, NEGATIVE)
    with torch.no_grad():
        high_scores, low_scores = score_texts(model, tokenizer, high), score_texts(model, tokenizer, low)
    assert min(high_scores) > max(low_scores), (name, high_scores, low_scores)


def test_cli_default_works_offline(capsys):
    """`rad-q generate PROMPT` with no options: embedded SmolLM2 steered by the shipped RAD-Q detox model."""
    assert main(["generate", "I think that you", "--num-samples", "1", "--max-new-tokens", "5"]) == 0
    out = capsys.readouterr().out
    assert "== rad-q (β=10, detox)" in out and "1. I think that you" in out


def test_cli_trunk_method_steers_the_embedded_lm(capsys):
    """`--method rad-q-trunk`: the shipped trunk model is attached to the embedded SmolLM2 (its fingerprint checked)."""
    argv = ["generate", "The movie was", "--task", "positive", "--method", "rad-q-trunk", "--num-samples", "2",
            "--max-new-tokens", "5", "--compare"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "== rad-q-trunk (β=10, positive)" in out and "== unguided" in out and "2. [" in out
