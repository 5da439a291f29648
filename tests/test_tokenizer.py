import pytest

from sam.config import Config
from sam.tokenizer import tokenizer_for, train_wordpiece
from tests.helpers import tweet_rows

TEXTS = [row["text"] for row in tweet_rows()]


def test_wordpiece_is_a_standard_hf_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_wordpiece(TEXTS, vocab_size=300)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("I love this")["input_ids"] == tokenizer("I love this")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(tokenizer("love")["input_ids"])[0] == "[CLS]"


def test_default_tokenizer_is_corpus_wordpiece_without_network(tmp_path):
    # HF_HUB_OFFLINE=1 (conftest): the default must not need the hub, and must honour vocab_size and lowercase.
    tokenizer = tokenizer_for(Config().with_flat(vocab_size=120, lowercase=True), TEXTS)
    assert 100 <= len(tokenizer) <= 120
    assert tokenizer.tokenize("LOVE") == tokenizer.tokenize("love") == ["love"]
    tokenizer.save_pretrained(tmp_path)
    assert len(tokenizer_for(Config().with_flat(tokenizer=str(tmp_path), vocab_size=999), ["unused"])) == len(tokenizer)


def test_named_tokenizer_that_cannot_be_had_is_an_error_not_a_silent_fallback():
    with pytest.raises(ValueError, match="tokenizer 'bert-base-cased': cannot load"):
        tokenizer_for(Config().with_flat(tokenizer="bert-base-cased"), TEXTS)
