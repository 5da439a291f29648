import numpy as np

from sam.batching import collate, length_bucketed, pad_batch
from sam.encoding import token_budget_chunks


def ids(*lengths: int) -> np.ndarray:
    column = np.empty(len(lengths), dtype=object)
    column[:] = [np.arange(2, 2 + n) for n in lengths]
    return column


def test_pad_batch_pads_to_the_longest_row_and_masks():
    batch = pad_batch(ids(2, 5), pad_id=0)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["attention_mask"].sum(1).tolist() == [2, 5]
    assert (batch["input_ids"][0, 2:] == 0).all()


def test_collate_adds_labels():
    batch = collate({"input_ids": ids(3, 2), "labels": np.array([0, 2])}, pad_id=0)
    assert batch["labels"].tolist() == [0, 2] and batch["input_ids"].shape == (2, 3)


def test_length_buckets_keep_every_row_and_group_similar_lengths():
    lengths = [9, 1, 8, 2, 7, 3, 6, 4]
    window = {"input_ids": ids(*lengths), "labels": np.array(lengths)}
    batches = list(length_bucketed(window, batch_size=2, pad_id=0, rng=np.random.default_rng(0)))
    assert sorted(label for batch in batches for label in batch["labels"].tolist()) == sorted(lengths)
    assert sorted(batch["input_ids"].shape[1] for batch in batches) == [2, 4, 7, 9]  # no batch pads 1 to 9


def test_token_budget_chunks_cover_every_row_once_within_the_budget():
    lengths = [30, 5, 6, 100, 5, 7, 29]
    chunks = token_budget_chunks(lengths, max_tokens=60)
    assert sorted(i for chunk in chunks for i in chunk) == list(range(len(lengths)))
    assert chunks == [[1, 4, 2, 5], [6, 0], [3]]  # the 100-token row alone, over the budget
    assert all(len(c) * max(lengths[i] for i in c) <= 60 for c in chunks if len(c) > 1)
