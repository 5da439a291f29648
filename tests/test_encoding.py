import json
import subprocess
import sys

from tokenizers import Tokenizer

from sam.encoding import encode, encode_rows
from sam.tokenizer import train_wordpiece
from tests.helpers import tweet_rows

TEXTS = [row["text"] for row in tweet_rows()]


def test_encode_gives_the_transformers_tokenizers_ids_truncated():
    tokenizer = train_wordpiece(TEXTS, vocab_size=300)
    texts = ["love", "I hate this stupid phone, it broke again " * 20] + TEXTS
    ids = encode(tokenizer, texts, max_length=16)
    assert len(ids[0]) < 16 and len(ids[1]) == 16
    assert [row.tolist() for row in ids] == tokenizer(texts, truncation=True, max_length=16)["input_ids"]


def test_the_rust_tokenizer_alone_gives_the_same_ids_and_never_pads():
    tokenizer = train_wordpiece(TEXTS, vocab_size=300)
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.enable_padding(length=64)  # as some saved tokenizer.json files do
    assert [row.tolist() for row in encode(backend, TEXTS, 32)] == [row.tolist() for row in encode(tokenizer, TEXTS, 32)]


def test_encode_rows_keeps_labels_beside_ids():
    import pandas as pd

    tokenizer = train_wordpiece(TEXTS, vocab_size=300)
    rows = encode_rows(pd.DataFrame({"text": ["love it", "hate it"], "label": [2, 0]}), tokenizer.backend_tokenizer, 8)
    assert rows["labels"].tolist() == [2, 0] and rows["input_ids"][0].tolist() == encode(tokenizer, ["love it"], 8)[0].tolist()


def test_importing_encoding_loads_neither_torch_nor_transformers():
    """Ray Data's tokenizing tasks import it in fresh processes: heavy imports there delay every epoch."""
    code = "import sys, json, sam.encoding; print(json.dumps(sorted({'torch', 'transformers'} & set(sys.modules))))"
    assert json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout) == []
