"""ReCoRD's answer scoring: SQuAD v1.1 normalisation, token F1 and exact match, max over gold answers.

Written out (a dozen lines) rather than imported: the official evaluation
script is not a package, and `transformers.data.metrics.squad_metrics` is
gone from transformers 5.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace (in that order)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """Harmonic mean of token precision and recall of the normalised strings (bag of tokens)."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: list[str]) -> bool:
    """Whether the prediction equals any gold answer after normalisation."""
    return any(normalize_answer(prediction) == normalize_answer(gold) for gold in golds)


def best_f1(prediction: str, golds: list[str]) -> float:
    """Token F1 against the best-matching gold answer."""
    return max(token_f1(prediction, gold) for gold in golds)
