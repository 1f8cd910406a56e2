"""How much of profanity-check's per-source lead is its having been trained on the held-out texts (reward_quality.md §10)?

Run from the repository root: `PYTHONPATH=. OMP_NUM_THREADS=1 python docs/measure_lexical_baseline.py [out_dir]`.

`alt-profanity-check` is a calibrated linear SVM on TF-IDF features, fitted on all of Davidson et al.'s tweets and the
Kaggle Jigsaw Toxic Comment *train* set: the held-out Davidson and Jigsaw texts here are among the texts it was
fitted on. The same recipe is fitted here twice on the offline corpora (labels binarised at 0.5):
- `lexical`: on the texts the shipped toxicity models were trained on (train minus the 5 % validation split), so it
  and the models have seen the same texts and none of the held-out ones;
- `lexical+held-out`: on those and every held-out text, as profanity-check was fitted on its sources' texts.
On each source, `lexical+held-out − lexical` is what fitting the held-out texts is worth to this recipe; the shipped
models are compared with the uncontaminated `lexical`. Every difference comes with DeLong's paired standard error.
The models' rewards on the 6,755 held-out texts take about 3 minutes each on one core; they are cached in
`outputs/lexical_baseline/`, and the result is written to `out_dir/lexical_baseline.json`.
"""

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC
from transformers import AutoModel, AutoTokenizer

from rad_q_hf.checkpoints import default_checkpoint
from rad_q_hf.data import load_toxicity, with_validation
from rad_q_hf.evaluation.judges import toxicity_judge
from rad_q_hf.evaluation.reward_quality import ALL, held_out_predictions, paired_auc, source_metrics

out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/reward_quality")
cache = Path("outputs/lexical_baseline")
cache.mkdir(parents=True, exist_ok=True)
data = with_validation(load_toxicity("offline", "../shared/data"), 5.0)  # the shipped models' recipe split
train, test = data["train"], data["test"]
texts = list(test["text"])
labels = np.array([row[0] for row in test["labels"]])
sources = np.array(test["source"])


def fit_lexical(fit_texts: list[str], fit_labels: np.ndarray):
    """profanity-check's recipe: TF-IDF (English stop words, min_df 1e-4), balanced linear SVM, sigmoid-calibrated."""
    vectorizer = TfidfVectorizer(stop_words="english", min_df=0.0001)
    svm = LinearSVC(class_weight="balanced", dual=False, tol=1e-2, max_iter=100_000)
    model = CalibratedClassifierCV(svm).fit(vectorizer.fit_transform(fit_texts), fit_labels >= 0.5)
    return lambda xs: model.predict_proba(vectorizer.transform(xs))[:, 1]


train_labels = np.array([row[0] for row in train["labels"]])
scores = {
    "lexical": fit_lexical(list(train["text"]), train_labels)(texts),
    "lexical+held-out": fit_lexical(list(train["text"]) + texts, np.concatenate([train_labels, labels]))(texts),
    "profanity-check": np.array(toxicity_judge("profanity-check").score(texts)),
}
for name in ("rad-v-toxicity", "rad-q-toxicity"):
    path = cache / f"{name}.npy"
    if not path.exists():  # the shipped model as users get it: the fp16 delta assembled on the embedded backbone
        ckpt = default_checkpoint(name)
        model, tokenizer = AutoModel.from_pretrained(ckpt), AutoTokenizer.from_pretrained(ckpt)
        np.save(path, held_out_predictions(model, tokenizer, test, max_length=64))
    scores[name] = np.load(path)

pairs = [
    ("lexical+held-out", "lexical"),
    ("profanity-check", "lexical"),
    ("rad-v-toxicity", "lexical"),
    ("rad-q-toxicity", "lexical"),
    ("rad-v-toxicity", "profanity-check"),
    ("rad-q-toxicity", "profanity-check"),
]
result = {"train_texts": len(train), "held_out_texts": len(texts), "auc": {}, "paired": {}}
per_source = {name: source_metrics(s, labels, sources) for name, s in scores.items()}  # by source, then ALL
for source in per_source["lexical"]:
    idx = np.ones(len(texts), bool) if source == ALL else sources == source
    result["auc"][source] = {name: metrics[source]["auc"] for name, metrics in per_source.items()}
    result["paired"][source] = {
        f"{a} - {b}": {k: v for k, v in paired_auc(scores[a][idx], scores[b][idx], labels[idx]).items()
                       if k in ("difference", "standard_error")}
        for a, b in pairs
    }  # fmt: skip
(out / "lexical_baseline.json").write_text(json.dumps(result, indent=1) + "\n")
for source, row in result["paired"].items():
    cells = "  ".join(f"{k}: {v['difference']:+.3f} ± {v['standard_error']:.3f}" for k, v in row.items())
    print(f"{source:30s} {cells}")
