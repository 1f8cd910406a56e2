"""Data loaders on small folders laid out like shared/data, the collator against literal tensors, and the errors."""

import gzip
import json

import pytest
import torch
from datasets import Dataset

from rad_q_hf import data as rdata
from rad_q_hf.data import DataError, RewardDataCollator


def write_jsonl(path, rows, compress=True):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(r) for r in rows) + "\n"
    if compress:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


@pytest.fixture
def toxicity_dir(tmp_path):
    t = tmp_path / "toxicity"
    write_jsonl(t / "civil_comments_toxic_spans/civil_comments_toxic_spans.jsonl.gz",
                [{"text": f"civil  comment {i}", "toxicity": 0.25 * (i % 5)} for i in range(40)])  # fmt: skip
    write_jsonl(t / "jigsaw_toxic_comment/airdecoding_jigsaw_10k.jsonl.gz",
                [{"text": "civil comment 0", "toxic": 1}, {"text": "wiki talk", "toxic": 0}])  # fmt: skip
    write_jsonl(t / "jigsaw_toxic_comment/jaythibs_jigsaw_subsets.jsonl.gz", [{"text": "wiki talk", "toxic": 1}])
    write_jsonl(
        t / "davidson_hate_offensive/labeled_data.jsonl.gz", [{"text": "a tweet", "frac_hate_or_offensive": 2 / 3}]
    )
    for name in ("tweeteval_offensive", "tweeteval_hate"):
        write_jsonl(t / name / "train.jsonl.gz", [{"text": f"{name} train", "label": 1}])
        write_jsonl(t / name / "val.jsonl", [{"text": f"{name} val", "label": 0}], compress=False)
        write_jsonl(
            t / name / "test.jsonl",
            [{"text": f"{name} test", "label": 1}, {"text": "wiki talk", "label": 1}],
            compress=False,
        )
    write_jsonl(t / "ruddit/ruddit_with_text.jsonl.gz", [{"text": "reddit", "offensiveness_score": -0.5}])
    return tmp_path


def test_offline_toxicity_maps_deduplicates_and_holds_out(toxicity_dir):
    ds = rdata.load_toxicity("offline", toxicity_dir, test_percent=20)
    rows = {r["text"]: r for split in ("train", "test") for r in ds[split]}
    assert rows["civil comment 0"]["labels"] == [0.0]  # whitespace normalised; the first source wins
    assert rows["civil comment 0"]["source"] == "civil_comments_toxic_spans"
    assert rows["reddit"]["labels"] == [0.25]  # ruddit (s + 1) / 2
    assert rows["a tweet"]["labels"] == pytest.approx([2 / 3])
    # A text in an official test split is held out, whatever other source also has it.
    assert "wiki talk" in ds["test"]["text"] and "wiki talk" not in ds["train"]["text"]
    assert "tweeteval_hate test" in ds["test"]["text"] and "tweeteval_hate val" in ds["train"]["text"]
    assert len(rows) == ds["train"].num_rows + ds["test"].num_rows  # no duplicates
    for text in ds["test"]["text"]:  # the hash split is a fixed function of the text
        assert rdata.held_out(text, 20) or text in {"wiki talk", "tweeteval_hate test", "tweeteval_offensive test"}
    assert 2 <= sum(rdata.held_out(f"civil comment {i}", 20) for i in range(40)) <= 16
    assert set(ds["train"].column_names) == {"text", "labels", "source"}
    rdata.validate(ds["train"], num_labels=1)


def test_sentiment_sources(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2/train.tsv").write_text("sentence\tlabel\ngreat fun \t1\ndull \t0\n")
    (tmp_path / "sst2/dev.tsv").write_text("sentence\tlabel\nlovely .\t1\n")
    write_jsonl(tmp_path / "amazon_reviews/blitzer_multidomain_labeled.jsonl.gz",
                [{"title": "Bad", "text": "broke in a day", "label": 0}])  # fmt: skip
    write_jsonl(tmp_path / "imdb/train_subset.jsonl.gz", [{"text": "fine<br />film", "label": 1}])
    write_jsonl(tmp_path / "imdb/test_subset.jsonl.gz", [{"text": "bad film", "label": 0}])
    sst2 = rdata.load_sentiment("sst2", tmp_path)
    assert sst2["train"]["text"] == ["great fun", "dull"] and sst2["train"]["labels"] == [[1.0], [0.0]]
    assert sst2["test"]["text"] == ["lovely ."]
    amazon = rdata.load_sentiment("amazon", tmp_path, test_percent=0)
    assert amazon["train"][0] == {"text": "Bad. broke in a day", "labels": [0.0], "source": "amazon"}
    imdb = rdata.load_sentiment("imdb", tmp_path)
    assert imdb["train"]["text"] == ["fine film"] and imdb["test"]["labels"] == [[0.0]]
    with pytest.raises(DataError, match="Unknown sentiment source 'yelp'"):
        rdata.load_sentiment("yelp", tmp_path)


def test_jigsaw_csv(tmp_path):
    header = "id,comment_text,target,severe_toxicity,obscene,identity_attack,insult,threat,sexual_explicit"
    (tmp_path / "train.csv").write_text(f"{header}\n1,you fool,0.8,0.1,0.2,0.0,0.7,0.0,0.0\n2,,0.0,0,0,0,0,0,0\n")
    test_header = header.replace("target", "toxicity")
    (tmp_path / "test_public_expanded.csv").write_text(f"{test_header}\n3,nice,0.0,0,0,0,0,0,0\n")
    ds = rdata.load_toxicity("jigsaw", jigsaw_dir=tmp_path)
    assert ds["train"]["text"] == ["you fool"]  # the empty comment is dropped
    assert ds["train"][0]["labels"] == pytest.approx([0.8, 0.1, 0.2, 0.0, 0.7, 0.0, 0.0])
    assert ds["test"]["text"] == ["nice"] and rdata.toxicity_label_names("jigsaw") == list(rdata.JIGSAW_ATTRIBUTES)
    (tmp_path / "test_public_expanded.csv").unlink()
    (tmp_path / "train.csv").write_text("id,comment_text,target\n1,hi,0.5\n")
    with pytest.raises(DataError, match="lacks the column"):
        rdata.load_toxicity("jigsaw", jigsaw_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        rdata.load_toxicity("jigsaw", jigsaw_dir=tmp_path / "nope")


def test_own_files(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("sentence\tpos\tneg\nhello there\t0.9\t0.1\n")
    ds = rdata.load_labelled_file(path, "sentence", ["pos", "neg"])
    assert ds[0] == {"text": "hello there", "labels": pytest.approx([0.9, 0.1])}
    with pytest.raises(DataError, match=r"lacks the column\(s\) \['score'\]"):
        rdata.load_labelled_file(path, "sentence", ["score"])
    with pytest.raises(DataError, match="does not exist"):
        rdata.load_labelled_file(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="use a .jsonl"):
        (tmp_path / "x.txt").write_text("x")
        rdata.load_labelled_file(tmp_path / "x.txt")


def test_missing_data_folder_errors(tmp_path, monkeypatch):
    monkeypatch.delenv(rdata.DATA_ENV, raising=False)
    with pytest.raises(DataError, match="No data folder given"):
        rdata.load_toxicity("offline")
    with pytest.raises(DataError, match="does not exist"):
        rdata.load_sentiment("sst2", tmp_path / "nowhere")
    with pytest.raises(DataError, match="is missing"):
        rdata.load_sentiment("sst2", tmp_path)  # the folder exists, its sst2/ files do not
    monkeypatch.setenv(rdata.DATA_ENV, str(tmp_path))
    assert rdata.resolve_data_dir() == tmp_path
    with pytest.raises(DataError, match="Unknown toxicity source"):
        rdata.load_toxicity("perspective")


@pytest.mark.parametrize(
    "rows, message",
    [
        ({"text": ["a"]}, r"lacks the column\(s\) \['labels'\]"),
        ({"text": ["a", "b"], "labels": [[0.5], [1.5]]}, r"outside \[0, 1\], e.g. row 1"),
        ({"text": ["a"], "labels": [[float("nan")]]}, r"outside \[0, 1\]"),
        ({"text": ["a", "  "], "labels": [[0.5], [0.5]]}, "empty text, e.g. row 1"),
        ({"text": ["a"], "labels": [0.5]}, "a list of floats per row"),
        ({"text": ["a"], "labels": [[0.5, 0.5]]}, "2 labels but the reward model has 1"),
    ],
)
def test_validate_names_the_problem(rows, message):
    with pytest.raises(DataError, match=message):
        rdata.validate(Dataset.from_dict(rows), num_labels=1)


def test_tokenize_keeps_labels_and_adds_no_special_tokens(tokenizer):
    ds = Dataset.from_dict(
        {"text": ["the movie was great", "you idiot"], "labels": [[1.0], [0.0]], "source": ["a", "b"]}
    )
    out = rdata.tokenize(ds, tokenizer, max_length=3)
    assert out.column_names == ["labels", "input_ids"] or set(out.column_names) == {"labels", "input_ids"}
    assert out[0]["input_ids"] == tokenizer("the movie was great", add_special_tokens=False)["input_ids"][:3]
    assert tokenizer.bos_token_id not in out[0]["input_ids"]
    with pytest.raises(DataError, match="no rows"):
        rdata.tokenize(ds.select([]), tokenizer)


def test_collator_pads_right_against_literal_tensors():
    collate = RewardDataCollator(pad_token_id=2)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [0.5, 1.0]}, {"input_ids": [8], "labels": [0.0, 0.25]}])
    assert torch.equal(batch["input_ids"], torch.tensor([[5, 6, 7], [8, 2, 2]]))
    assert torch.equal(batch["attention_mask"], torch.tensor([[1, 1, 1], [1, 0, 0]]))
    assert torch.equal(batch["labels"], torch.tensor([[0.5, 1.0], [0.0, 0.25]]))
    assert batch["labels"].dtype == torch.float32 and batch["input_ids"].dtype == torch.long
    padded = RewardDataCollator(pad_token_id=0, pad_to_multiple_of=4)([{"input_ids": [9], "labels": [1.0]}])
    assert torch.equal(padded["input_ids"], torch.tensor([[9, 0, 0, 0]]))
    assert "labels" not in collate([{"input_ids": [1]}])  # distillation rows carry no labels
    with pytest.raises(DataError, match="no tokens"):
        collate([{"input_ids": [], "labels": [0.0]}])
    with pytest.raises(DataError, match="not a bare number"):
        collate([{"input_ids": [1], "labels": 0.5}])


def test_collator_does_what_data_collator_with_padding_does(tokenizer):
    # The same job as transformers' collator where that one applies (a tokenizer at hand, right padding); see the
    # RewardDataCollator docstring for why the project keeps its own.
    from transformers import DataCollatorWithPadding

    rows = [{"input_ids": [5, 6, 7], "labels": [0.5, 1.0]}, {"input_ids": [8], "labels": [0.0, 0.25]}]
    tokenizer.padding_side = "right"
    try:
        reference = DataCollatorWithPadding(tokenizer, return_tensors="pt")([dict(r) for r in rows])
    finally:
        tokenizer.padding_side = "left"
    ours = RewardDataCollator(pad_token_id=tokenizer.pad_token_id)(rows)
    assert ours.keys() == reference.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], reference[key], msg=key)
