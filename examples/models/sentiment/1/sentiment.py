"""Sentiment example: hashed bag-of-words features and a linear classifier served with numpy only.

The pipeline stages, in the order the server runs them around the model:

* ``preprocess``  ``{"text": str}`` (or the text alone, as a V2 BYTES input "text" gives it)
  -> ``{"text", "tokens", "features"}`` (lowercased word tokens,
  then word presence hashed into ``N_FEATURES`` buckets, L2-normalised: a hashed bag of words).
* ``validate``    rejects a text with no alphabetic token (``ValueError("text contains no words")``);
  it accepts the raw item or the preprocessed one, so it works before or after ``preprocess``.
* ``SentimentModel.predict``  features -> probability that the text is positive (a float).
* ``postprocess`` probability -> ``{"label": ..., "scores": {"positive": p, "negative": 1 - p}}``.

The weights (``weights.json`` in this folder) come from ``examples/train_sentiment.py``, which
imports this file to compute exactly the same features at training time.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

N_FEATURES = 1024
WEIGHTS_FORMAT = "inferd-example-sentiment/1"
WEIGHTS_FILE = "weights.json"
LABELS = ("negative", "positive")

_TOKEN_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens (letters/digits, inner apostrophes kept: ``don't``)."""
    return _TOKEN_RE.findall(text.lower())


def has_word(tokens: list[str]) -> bool:
    """True when at least one token contains a letter."""
    return any(any(ch.isalpha() for ch in token) for token in tokens)


def bucket(token: str) -> int:
    """Stable bucket of a token: blake2b, unlike ``hash()``, is the same in every process."""
    digest = hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % N_FEATURES


def featurize(tokens: list[str]) -> np.ndarray:
    """Hashed bag of words: token presence per bucket, as an L2-normalised float64 vector."""
    vector = np.zeros(N_FEATURES, dtype=np.float64)
    for token in sorted(set(tokens)):
        vector[bucket(token)] += 1.0
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def _tokens_of(item: dict[str, Any]) -> list[str]:
    tokens = item.get("tokens")
    if tokens is None:
        return tokenize(str(item.get("text", "")))
    return [str(token) for token in tokens]


def preprocess(item: dict[str, Any] | str) -> dict[str, Any]:
    """``{"text": str}`` or ``str`` -> ``{"text": str, "tokens": list[str], "features": np.ndarray}``."""
    text = item if isinstance(item, str) else str(item["text"])
    tokens = tokenize(text)
    return {"text": text, "tokens": tokens, "features": featurize(tokens)}


def validate(item: dict[str, Any]) -> None:
    """Reject texts without any word; accepts the raw or the preprocessed item."""
    if not has_word(_tokens_of(item)):
        raise ValueError("text contains no words")


def postprocess(p_positive: float) -> dict[str, Any]:
    """Probability of "positive" -> label plus both scores rounded to 4 decimals."""
    positive = round(float(p_positive), 4)
    negative = round(1.0 - positive, 4)
    return {
        "label": "positive" if positive >= 0.5 else "negative",
        "scores": {"positive": positive, "negative": negative},
    }


class SentimentModel:
    """Logistic regression over hashed features; ``predict`` returns P(positive) per item."""

    def __init__(self) -> None:
        self.coef: np.ndarray | None = None
        self.intercept = 0.0

    def load(self, path: str) -> None:
        payload = json.loads((Path(path) / WEIGHTS_FILE).read_text(encoding="utf-8"))
        if payload.get("format") != WEIGHTS_FORMAT:
            found = payload.get("format")
            raise ValueError(f"{WEIGHTS_FILE}: expected format {WEIGHTS_FORMAT!r}, got {found!r}")
        coef = np.asarray(payload["coef"], dtype=np.float64)
        if coef.shape != (N_FEATURES,) or int(payload["n_features"]) != N_FEATURES:
            raise ValueError(f"{WEIGHTS_FILE}: expected {N_FEATURES} weights, got {coef.shape}")
        intercept = float(payload["intercept"])
        if not (np.all(np.isfinite(coef)) and math.isfinite(intercept)):
            raise ValueError(f"{WEIGHTS_FILE}: weights must be finite numbers")
        self.coef = coef
        self.intercept = intercept

    def _features(self, item: dict[str, Any]) -> np.ndarray:
        features = item.get("features")
        if features is None:  # served without the preprocessor: featurize here
            return featurize(_tokens_of(item))
        return np.asarray(features, dtype=np.float64)

    def predict(self, batch: list[dict[str, Any]]) -> list[float]:
        if self.coef is None:
            raise RuntimeError("SentimentModel.predict called before load()")
        if not batch:
            return []
        x = np.stack([self._features(item) for item in batch])
        logits = x @ self.coef + self.intercept
        probabilities = 1.0 / (1.0 + np.exp(-np.clip(logits, -500.0, 500.0)))
        return [float(p) for p in probabilities]
