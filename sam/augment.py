"""The distillation transfer set's augmentation (Tang et al. 2019): masked, replaced and shortened copies of each
training row. A module of its own, light as `sam.data`, because Ray Data's tasks import it to run it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import ray.data

from sam.data import fold_of, light_tasks, split_bins, split_key, text_sample

MASK = "[MASK]"  # the BERT-family mask token: the teacher's and the corpus tokenizer's vocabularies both have it
P_MASK, P_REPLACE, P_NGRAM, MAX_NGRAM = 0.1, 0.1, 0.25, 5  # Tang et al. 2019's rates


REPLACEMENT_WORDS = 5000  # the most frequent training words, the pool a replaced word is drawn from


def augment_text(text: str, rng: np.random.Generator, words: list[str]) -> str:
    """One augmented copy (Tang et al. 2019): each word masked or swapped for a word of `words` with probability
    0.1 each, then, a quarter of the time, only a random n-gram (n of 1 to 5) of the result kept."""
    tokens = text.split() or [text]
    for i, draw in enumerate(rng.random(len(tokens))):
        if draw < P_MASK:
            tokens[i] = MASK
        elif draw < P_MASK + P_REPLACE and words:
            tokens[i] = words[rng.integers(len(words))]
    if rng.random() < P_NGRAM and len(tokens) > 1:
        n = int(rng.integers(1, min(MAX_NGRAM, len(tokens)) + 1))
        start = int(rng.integers(0, len(tokens) - n + 1))
        tokens = tokens[start : start + n]
    return " ".join(tokens)


def _with_augmented_copies(batch: pd.DataFrame, copies: int, seed: int, words: list[str], folds: int = 0) -> pd.DataFrame:
    """Each row, then `copies` augmented copies of it with its label (and with `folds`, its cross-fitting fold:
    a copy is scored by the teacher that never saw its original); seeded by the row's text, so the same transfer
    set comes out whatever the blocks."""
    texts, labels = [], []
    for text, label in zip(batch["text"], batch["label"]):
        rng = np.random.default_rng([seed, int(split_key([text], seed)[0] * 2**32)])
        texts += [text] + [augment_text(text, rng, words) for _ in range(copies)]
        labels += [label] * (copies + 1)
    rows = pd.DataFrame({"text": texts, "label": np.asarray(labels, dtype=np.int64)})
    if folds:
        rows["fold"] = np.repeat(fold_of(split_bins(batch["text"], seed), folds), copies + 1)
    return rows


def replacement_words(train: ray.data.Dataset) -> list[str]:
    """The training sample's most frequent words, sorted: the same pool for every block and run."""
    counts = Counter(word for text in text_sample(train) for word in text.split())
    return sorted(word for word, _ in counts.most_common(REPLACEMENT_WORDS))


def transfer_rows(train: ray.data.Dataset, copies: int, seed: int, folds: int = 0) -> ray.data.Dataset:
    """The distillation transfer set: the training rows and `copies` augmented copies of each, with each
    original's fold of `folds` (`sam.data.fold_of`) for cross-fitted teachers."""
    return train.map_batches(_with_augmented_copies, batch_format="pandas", **light_tasks(),
                             fn_kwargs={"copies": copies, "seed": seed, "words": replacement_words(train), "folds": folds})
