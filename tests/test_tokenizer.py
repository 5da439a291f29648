from sam.tokenizer import resolve_tokenizer, train_wordpiece
from tests.conftest import tweet_rows

TEXTS = [row["text"] for row in tweet_rows()]


def test_wordpiece_is_a_standard_hf_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_wordpiece(TEXTS, vocab_size=300)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("I love this")["input_ids"] == tokenizer("I love this")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("love")["input_ids"])[0] == "[CLS]"


def test_offline_tokenizer_falls_back_to_corpus_wordpiece(caplog):
    tokenizer = resolve_tokenizer("bert-base-cased", TEXTS, vocab_size=300)  # HF_HUB_OFFLINE=1 in conftest
    assert len(tokenizer) <= 300
    assert "training a 300-word WordPiece tokenizer" in caplog.text
