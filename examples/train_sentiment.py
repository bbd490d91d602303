"""Train the sentiment example and write ``examples/models/sentiment/1/weights.json``.

    python examples/train_sentiment.py

Features are computed by the served module itself (``models/sentiment/1/sentiment.py``, imported by
path), so training and serving cannot drift apart. A scikit-learn LogisticRegression is fitted on the
small hand-written corpus below and its weights are exported to JSON, so serving needs only numpy.
Deterministic: the corpus, the hashing and the solver are fixed, and weights are rounded to 6 decimals.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
from sklearn.linear_model import LogisticRegression

VERSION_DIR = Path(__file__).resolve().parent / "models" / "sentiment" / "1"
MODULE_PATH = VERSION_DIR / "sentiment.py"
RANDOM_STATE = 0
DECIMALS = 6

POSITIVE = [
    "I love this product, it works great.",
    "Absolutely wonderful experience from start to finish.",
    "The service was excellent and the staff were friendly.",
    "This is the best purchase I have made all year.",
    "Fantastic quality, I am very happy with it.",
    "What a great movie, I enjoyed every minute.",
    "The food was delicious and fresh.",
    "Highly recommend it to anyone.",
    "Everything arrived quickly and in perfect condition.",
    "I am really pleased with the results.",
    "Such a nice and helpful support team.",
    "The new update is awesome and fast.",
    "Beautiful design and easy to use.",
    "It exceeded my expectations, amazing value.",
    "Great job, thank you so much!",
    "I had a lovely time at the hotel.",
    "The book was inspiring and well written.",
    "Super comfortable shoes, I would buy them again.",
    "Brilliant performance by the whole cast.",
    "The app is reliable and works perfectly.",
    "This made my day, I am so happy.",
    "Good value for the money.",
    "The concert was fantastic and the crowd was great.",
    "Really enjoyed the class, the teacher was excellent.",
    "Clean room, friendly staff, great location.",
    "It is not bad at all, actually quite good.",
    "The battery life is impressive.",
    "I like it a lot, very satisfied.",
    "Smooth delivery and a pleasant surprise.",
    "Terrific support, they solved my problem quickly.",
    "The coffee here is wonderful.",
    "A delightful read, I loved the ending.",
    "Five stars, would recommend to friends.",
    "Works as advertised and the price is fair.",
    "The kids loved it, great fun for the family.",
    "Outstanding customer care, very helpful.",
    "Perfect fit and the fabric feels great.",
    "I am impressed by how easy the setup was.",
    "Nice, fast and reliable.",
    "This is a wonderful little gadget.",
    "Happy with my order, thanks!",
    "The movie was funny and heartwarming.",
]

NEGATIVE = [
    "I hate this product, it broke after one day.",
    "Absolutely terrible experience from start to finish.",
    "The service was awful and the staff were rude.",
    "This is the worst purchase I have made all year.",
    "Poor quality, I am very disappointed.",
    "What a boring movie, I wasted two hours.",
    "The food was cold and tasteless.",
    "I would not recommend it to anyone.",
    "The package arrived late and damaged.",
    "I am really unhappy with the results.",
    "Unhelpful support team, they never answered.",
    "The new update is slow and buggy.",
    "Ugly design and hard to use.",
    "It did not meet my expectations, a waste of money.",
    "Bad job, very frustrating.",
    "I had a horrible time at the hotel.",
    "The book was dull and badly written.",
    "Uncomfortable shoes, I will never buy them again.",
    "Weak performance by the whole cast.",
    "The app is unreliable and keeps crashing.",
    "This ruined my day, I am so angry.",
    "Not good value for the money.",
    "The concert was a disappointment and too loud.",
    "Did not enjoy the class, the teacher was boring.",
    "Dirty room, rude staff, terrible location.",
    "It is not good at all, actually quite bad.",
    "The battery life is awful.",
    "I do not like it, very dissatisfied.",
    "Delivery was a nightmare and nothing worked.",
    "Useless support, they made my problem worse.",
    "The coffee here is disgusting.",
    "A tedious read, I hated the ending.",
    "One star, stay away from it.",
    "Does not work as advertised and the price is too high.",
    "The kids hated it, a complete waste.",
    "Horrible customer care, very unhelpful.",
    "Bad fit and the fabric feels cheap.",
    "I am annoyed by how hard the setup was.",
    "Broken, slow and unreliable.",
    "This is a pointless, defective gadget.",
    "Unhappy with my order, I want a refund.",
    "The movie was stupid and depressing.",
]


def load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("inferd_example_sentiment", MODULE_PATH)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {MODULE_PATH}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    sentiment = load_module()
    texts = POSITIVE + NEGATIVE
    y = np.array([1] * len(POSITIVE) + [0] * len(NEGATIVE), dtype=np.int64)
    x = np.stack([sentiment.featurize(sentiment.tokenize(text)) for text in texts])

    classifier = LogisticRegression(C=30.0, max_iter=1000, random_state=RANDOM_STATE)
    classifier.fit(x, y)
    accuracy = float(classifier.score(x, y))

    payload = {
        "format": sentiment.WEIGHTS_FORMAT,
        "n_features": int(sentiment.N_FEATURES),
        "labels": list(sentiment.LABELS),
        "intercept": round(float(classifier.intercept_[0]), DECIMALS),
        "coef": [round(float(w), DECIMALS) for w in classifier.coef_[0]],
        "trained_on": f"{len(POSITIVE)} positive + {len(NEGATIVE)} negative hand-written sentences",
    }
    out = VERSION_DIR / sentiment.WEIGHTS_FILE
    out.write_text(json.dumps(payload, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"training accuracy: {accuracy:.4f}")
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
