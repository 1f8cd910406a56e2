"""Tiny offline fixtures: a BPE tokenizer trained in-process and tiny GPT-2 / Llama backbone configs."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, LlamaConfig, PreTrainedTokenizerFast

import rad_q_hf  # noqa: F401  (registers the Auto classes)

CORPUS = [
    "the movie was great and the actors were wonderful",
    "the food was terrible and the service was slow",
    "you are a kind and thoughtful person",
    "what a stupid idea, you idiot",
    "I love this place, it is lovely",
    "this is the worst thing I have ever seen",
] * 20
SPECIALS = ["<bos>", "<eos>", "<pad>"]


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=SPECIALS, show_progress=False))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", padding_side="left"
    )


def gpt2_config(vocab_size: int) -> GPT2Config:
    # Tied LM head; dropout off so train/eval forwards agree.
    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=128,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def llama_config(vocab_size: int) -> LlamaConfig:
    # Untied LM head, grouped-query attention: exercises RAD-Q's separate output embeddings.
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )


BACKBONES = {"gpt2": gpt2_config, "llama": llama_config}
# kind -> (config class, model class, extra config options)
KINDS = {
    "rad_v": (rad_q_hf.RadVConfig, rad_q_hf.RadVForRewardModeling, {}),
    "rad_q": (rad_q_hf.RadQConfig, rad_q_hf.RadQForRewardModeling, {}),
    "rad_q_no_baseline": (rad_q_hf.RadQConfig, rad_q_hf.RadQForRewardModeling, {"use_baseline": False}),
}


def build_reward_model(kind: str, backbone: str, vocab_size: int, labels=("a", "b"), seed: int = 0):
    config_cls, model_cls, extra = KINDS[kind]
    torch.manual_seed(seed)
    config = config_cls(backbone_config=BACKBONES[backbone](vocab_size), label_names=list(labels), **extra)
    model = model_cls(config).eval()
    if hasattr(model, "reward_head"):  # RAD-Q's W starts at 0; tests want token-dependent rewards
        torch.nn.init.normal_(model.reward_head.weight, std=0.02)
    return model


@pytest.fixture(params=list(BACKBONES))
def backbone(request) -> str:
    return request.param


@pytest.fixture(params=list(KINDS))
def kind(request) -> str:
    return request.param


# Devices every device-aware test runs on: the CPU always, CUDA where there is one (CI has none: those cases skip).
_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=[_NO_CUDA, pytest.mark.cuda])]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param
