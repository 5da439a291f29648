import numpy as np

from sam.encoding import collate, encode, pad_batch, resolve_tokenizer, train_wordpiece
from tests.conftest import tweet_rows

TEXTS = [row["text"] for row in tweet_rows()]


def test_wordpiece_is_a_standard_hf_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_wordpiece(TEXTS, vocab_size=300)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("I love this")["input_ids"] == tokenizer("I love this")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("love")["input_ids"])[0] == "[CLS]"


def test_encode_truncates_and_pad_batch_masks():
    tokenizer = train_wordpiece(TEXTS, vocab_size=300)
    ids = encode(tokenizer, ["love", "I hate this stupid phone, it broke again " * 20], max_length=16)
    assert len(ids[0]) < 16 and len(ids[1]) == 16
    batch = pad_batch(ids, tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"][0].sum() == len(ids[0])
    assert (batch["input_ids"][0, len(ids[0]):] == tokenizer.pad_token_id).all()


def test_collate_adds_labels():
    column = np.empty(2, dtype=object)
    column[:] = [np.array([2, 5, 3]), np.array([2, 3])]
    batch = collate({"input_ids": column, "labels": np.array([0, 2])}, pad_id=0)
    assert batch["labels"].tolist() == [0, 2] and batch["input_ids"].shape == (2, 3)


def test_offline_tokenizer_falls_back_to_corpus_wordpiece(caplog):
    tokenizer = resolve_tokenizer("bert-base-cased", TEXTS, vocab_size=300)  # HF_HUB_OFFLINE=1 in conftest
    assert len(tokenizer) <= 300
    assert "training a 300-word WordPiece tokenizer" in caplog.text
