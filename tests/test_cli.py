"""`rad-q` on tiny models: generate (guided, unguided, --compare), train, and the error cases."""

import json
import shutil

import pytest
import torch
from conftest import CORPUS, build_reward_model, llama_config
from test_tokenizer_bridge import byte_level_bpe
from transformers import AutoModel, AutoTokenizer, GPT2Config, LlamaForCausalLM

from rad_q_hf import RadQConfig, RadQForRewardModeling, RadQTrunkForRewardModeling
from rad_q_hf.cli import main
from rad_q_hf.scoring import score_texts


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    LlamaForCausalLM(llama_config(len(tokenizer))).save_pretrained(root / "lm")
    tokenizer.save_pretrained(root / "lm")
    build_reward_model("rad_q", "llama", len(tokenizer), labels=("toxicity",)).save_pretrained(root / "rad-q")
    build_reward_model("rad_v", "llama", len(tokenizer), labels=("toxicity",)).save_pretrained(root / "rad-v")
    trunk = RadQTrunkForRewardModeling.from_lm(LlamaForCausalLM.from_pretrained(root / "lm"), 1, 1, ["toxicity"])
    with torch.no_grad():
        trunk.reward_head.weight.normal_(0, 0.5)  # W = 0 at init: nothing to steer or score with
    trunk.save_pretrained(root / "rad-q-trunk")  # reads the LM at root / "lm" (its config names it)
    # A reward model with a tokenizer of its own (another vocabulary): the LM's text reaches it through text.
    other_tok = byte_level_bpe(CORPUS[:6] + ["a cross tokenizer"], 90)
    build_reward_model("rad_q", "gpt2", len(other_tok), labels=("toxicity",)).save_pretrained(root / "rad-q-cross")
    other_tok.save_pretrained(root / "rad-q-cross")
    other = RadQConfig(backbone_config=GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4))
    RadQForRewardModeling(other).save_pretrained(root / "other-vocab")
    shutil.copytree(root / "rad-q", root / "broken")
    weights = root / "broken" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)  # a copy cut short
    return root


def run(capsys, *argv) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("method", ["rad-q", "rad-v", "rad-q-trunk"])
def test_generate_guided_and_compare(method, models, tokenizer, capsys):
    common = ["--lm", str(models / "lm"), "--reward-model", str(models / method), "--method", method,
              "--num-samples", "2", "--max-new-tokens", "4", "--top-k", "5"]  # fmt: skip
    out = run(capsys, "generate", "the movie was", *common)
    lines = [line for line in out.splitlines() if line[:2] in ("1.", "2.")]
    assert len(lines) == 2 and all(line[3:].startswith("the movie was") for line in lines)
    assert "unguided" not in out

    out = run(capsys, "generate", "the movie was", *common, "--compare", "--beta", "50")
    assert "== unguided" in out and f"== {method} (β=50, detox)" in out
    scored = [line[3:].split("] ", 1) for line in out.splitlines() if line[:2] in ("1.", "2.")]  # "[0.12", text
    rewards = [float(reward[1:]) for reward, _ in scored]
    reward_model = AutoModel.from_pretrained(models / method).eval()
    expected = score_texts(reward_model, tokenizer, [text for _, text in scored])  # the printed reward of each text
    assert len(rewards) == 4 and rewards == pytest.approx(expected, abs=0.0051)
    means = [line for line in out.splitlines() if line.startswith("mean score")]  # one per side, after its samples
    for side, line in zip((rewards[:2], rewards[2:]), means, strict=True):
        mean, high = float(line.split()[2].rstrip(";")), int(line.split()[3])
        assert mean == pytest.approx(sum(side) / 2, abs=0.006) and high == sum(r >= 0.5 for r in side)
    assert run(capsys, "generate", "the movie was", *common, "--seed", "3") == run(
        capsys, "generate", "the movie was", *common, "--seed", "3"
    )  # seeded


def test_generate_unguided_needs_no_reward_model(models, capsys):
    out = run(capsys, "generate", "you are", "--lm", str(models / "lm"), "--method", "none", "--num-samples", "1",
              "--max-new-tokens", "3")  # fmt: skip
    assert "== unguided" in out and "1. you are" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "polite"], "invalid choice: 'polite'"),
        (["--method", "rad-x"], "invalid choice: 'rad-x'"),
        (["--reward-model", "/no/such/folder"], "Reward model '/no/such/folder': the path does not exist."),
        (["--reward-model", "rad-q-toxic"], "shipped reward models ['rad-q-sentiment', "),
        (["--reward-model", "rad-q-toxic"], "Did you mean 'rad-q-toxicity'?"),
        (["--lm", "smollm2-135", "--method", "none"], "Did you mean 'smollm2-135m'?"),
        (["--lm", "./no/lm", "--method", "none"], "Language model './no/lm': the path does not exist."),
        (["--reward-model", "{models}/broken"], "Cannot read the weights in {models}/broken/model.safetensors"),
        (["--reward-model", "{models}/rad-q", "--method", "none", "--compare"], "The prompt is empty"),
        (
            ["--reward-model", "{models}/rad-v", "--method", "rad-q"],
            "is a rad_v model; it does not fit --method rad-q",
        ),
        (["--reward-model", "{models}/other-vocab"], "vocabulary"),
        (
            ["--reward-model", "{models}/rad-q", "--task", "positive"],
            "predicts ['toxicity'], but --task positive steers a label named 'positive'",
        ),
        (["--num-samples", "0", "--reward-model", "{models}/rad-q"], "must be ≥ 1"),
    ],
)
def test_generate_errors_are_clear(argv, message, models, capsys):
    argv = [a.replace("{models}", str(models)) for a in argv]
    message = message.replace("{models}", str(models))
    prompt = "  " if "empty" in message else "hi"
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", prompt, "--lm", str(models / "lm"), "--max-new-tokens", "2", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_broken_cached_shipped_model_is_rebuilt(models, tmp_path, monkeypatch, capsys):
    from transformers import AutoModel

    from rad_q_hf import checkpoints

    monkeypatch.setenv("RAD_Q_HF_CACHE", str(tmp_path))
    cached = tmp_path / "reward_models" / "rad-q-toxicity-0123"
    shutil.copytree(models / "broken", cached)
    rebuilt = []

    def assemble(name):  # stands in for default_checkpoint's assembly of the shipped delta
        rebuilt.append(name)
        shutil.copytree(models / "rad-q", cached)
        return str(cached)

    monkeypatch.setattr(checkpoints, "default_checkpoint", assemble)
    model = checkpoints.load_checkpoint(AutoModel.from_pretrained, str(cached), "rad-q-toxicity")
    assert rebuilt == ["rad-q-toxicity"] and model.config.model_type == "rad_q"
    assert "rebuilding it" in capsys.readouterr().err
    shutil.rmtree(cached)
    shutil.copytree(models / "broken", cached)
    with pytest.raises(checkpoints.CorruptCheckpointError, match="delete its cached folder"):  # a folder: no rebuild
        checkpoints.load_checkpoint(AutoModel.from_pretrained, str(cached), str(cached))


def test_a_hub_id_that_fails_says_no_folder_exists_either():
    from rad_q_hf.checkpoints import load_checkpoint

    def offline(path):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.")

    with pytest.raises(OSError, match="'outputs/rad-q' is not a folder here, and loading it as a Hub id failed: We"):
        load_checkpoint(offline, "outputs/rad-q")


def test_train_subcommands(models, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "toxicity", "--help"])
    assert exit_info.value.code == 0 and "--lora_r" in capsys.readouterr().out
    data = tmp_path / "train.jsonl"
    data.write_text(
        "\n".join(json.dumps({"text": t, "label": y}) for t, y in [("you idiot", 1.0), ("lovely", 0.0)] * 4)
    )
    out = tmp_path / "out"
    main(["train", "toxicity", "--backbone", str(models / "lm"), "--train_file", str(data), "--output_dir", str(out),
          "--max_steps", "1", "--report_to", "none", "--use_cpu", "--dataloader_pin_memory", "false"])  # fmt: skip
    assert (out / "config.json").exists() and (out / "model.safetensors").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "sentiment", "--backbone", str(models / "lm"), "--data_dir", str(tmp_path / "missing"),
              "--output_dir", str(tmp_path / "s")])  # fmt: skip
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "toxicity", "--backbone", "smolm2-135m", "--train_file", str(data), "--output_dir",
              str(tmp_path / "t")])  # fmt: skip
    assert exit_info.value.code == 2 and "Did you mean 'smollm2-135m'?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "distill", "--teacher", str(models / "rad-q"), "--backbone", str(models / "lm"),
              "--train_file", str(data), "--output_dir", str(tmp_path / "d")])  # fmt: skip
    assert exit_info.value.code == 2 and "not a RAD-V one" in capsys.readouterr().err


def test_rank_subcommand(models, tmp_path, capsys):
    out_dir = tmp_path / "rank"
    out = run(capsys, "rank", "--reward-model", str(models / "rad-q"), "--reward-model", str(models / "rad-v"),
              "--lm", str(models / "lm"), "--num-prefixes", "40", "--tokens", "vocab", "--continuation-tokens", "6",
              "--output", str(out_dir))  # fmt: skip
    results = json.loads((out_dir / "results.json").read_text())["results"]
    rad_q, rad_v = results[str(models / "rad-q")], results[str(models / "rad-v")]
    assert rad_q["prefix_rows_before_dedup"] == 40 and rad_q["shape"][1] == 120
    assert rad_q["shape"] == rad_v["shape"] and 33 < rad_q["shape"][0] <= 40  # distinct prefixes, same for both
    assert rad_q["model_type"] == "rad_q" and rad_q["d_plus_1"] == 33
    assert rad_q["numerical_rank"] <= 33 < rad_v["numerical_rank"]
    assert (out_dir / "spectra.png").read_bytes()[:4] == b"\x89PNG" and "numerical rank" in out
    topk = run(capsys, "rank", "--reward-model", str(models / "rad-q"), "--lm", str(models / "lm"),
               "--num-prefixes", "10", "--top-k", "3", "--output", str(tmp_path / "topk"))  # fmt: skip
    shape = json.loads((tmp_path / "topk" / "results.json").read_text())["results"][str(models / "rad-q")]["shape"]
    assert shape[0] <= 10 and 3 <= shape[1] <= 30 and "rank" in topk


def test_compare_scores_with_the_reward_models_own_tokenizer(models, capsys):
    """--compare scores each text with the tokenizer the reward model reads, not the LM's (cross-tokenizer)."""
    out = run(capsys, "generate", "the movie was", "--lm", str(models / "lm"), "--reward-model",
              str(models / "rad-q-cross"), "--method", "rad-q", "--num-samples", "2", "--max-new-tokens", "4",
              "--top-k", "5", "--compare")  # fmt: skip
    scored = [line[3:].split("] ", 1) for line in out.splitlines() if line[:2] in ("1.", "2.")]
    rm = AutoModel.from_pretrained(models / "rad-q-cross").eval()
    rm_tok = AutoTokenizer.from_pretrained(models / "rad-q-cross")
    expected = score_texts(rm, rm_tok, [text for _, text in scored])
    assert [float(r[1:]) for r, _ in scored] == pytest.approx(expected, abs=0.0051)
