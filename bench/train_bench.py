"""Training throughput: one Ray Train worker (Ray Data streaming tokenization, DDP wrapper, reporting) against a
plain PyTorch loop over the same `Learner`, rows, tokenizer and thread count, run interleaved for several rounds.

    python bench/train_bench.py --data ../shared/data/tweet_sentiment_extraction --limit-train 8000 [--rounds 5]

Each round trains one epoch each way: Ray Train through `sam.train.train` (the epoch's samples/s, the training
loop's own clock, as the run reports it), the plain loop calling the same `train_step` on batches made by the
same `training_batches`. The Ray side tokenizes as it streams (Ray Data), the plain side tokenizes everything
first, inside its clock. Judge the median ratio Ray / plain over the rounds. A table, then JSON on the last line.
"""

import argparse
import json
import os
import tempfile

import numpy as np
import ray
import torch

from rounds import format_rounds, interleaved
from sam import LABELS
from sam.batching import training_batches
from sam.config import Config
from sam.data import class_weights, train_and_validation
from sam.encoding import encode_column
from sam.learner import EpochStats, Learner
from sam.models import build_model
from sam.tokenizer import tokenizer_for
from sam.train import steps_per_epoch, train, train_step
from steal import cpu_times, steal_percent


def plain_samples_per_s(config: Config, texts: list[str], labels, tokenizer) -> float:
    """What a user would write without Ray: tokenize everything, then loop over the same batches."""
    torch.manual_seed(config.train.seed)
    learner = Learner(build_model(config.model, tokenizer), config.train, steps_per_epoch(config, len(texts)),
                      class_weights(np.bincount(labels, minlength=len(LABELS))), torch.device("cpu"))
    window = config.train.batch_size * config.train.bucket_batches

    def batches():
        ids = encode_column(tokenizer, texts, config.model.max_length)
        windows = ({"input_ids": ids[start : start + window], "labels": labels[start : start + window]}
                   for start in range(0, len(texts), window))
        yield from training_batches(windows, config.train.batch_size, tokenizer.pad_token_id, config.train.seed)

    stats = EpochStats()
    for batch in stats.timed(batches()):
        stats.add(train_step(learner, batch), len(batch["labels"]))
    return stats.samples_per_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit-train", type=int, default=None, help="first N valid rows (default: all)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: 5)")
    args = parser.parse_args()

    threads = os.cpu_count() or 1
    config = Config().with_flat(source=args.data, limit_train=args.limit_train, epochs=1, torch_threads=threads)
    ray.init(include_dashboard=False, log_to_driver=False)
    train_rows = train_and_validation(config).train.to_pandas()  # the same rows the Ray side trains on, in memory
    tokenizer = tokenizer_for(config, train_rows["text"].tolist())
    texts, labels = train_rows["text"].tolist(), train_rows["label"].to_numpy()
    torch.set_num_threads(threads)
    details = []

    def ray_rate() -> float:
        mark = cpu_times()
        with tempfile.TemporaryDirectory() as scratch:
            epoch = train(config, os.path.join(scratch, "model"), storage=os.path.join(scratch, "runs"))["history"][0]
        details.append({"side": "ray", "data_wait_s": round(epoch["data_wait_s"], 1), "cpu_steal_percent": steal_percent(mark)})
        return epoch["samples_per_s"]

    def plain_rate() -> float:
        mark = cpu_times()
        rate = plain_samples_per_s(config, texts, labels, tokenizer)
        details.append({"side": "plain", "cpu_steal_percent": steal_percent(mark)})
        return rate

    result = interleaved(ray_rate, plain_rate, rounds=args.rounds)
    ray.shutdown()
    print(format_rounds(result, "Ray Train", "plain loop", unit="samples/s"))
    print(f"{len(texts)} rows, {threads} threads; Ray's wait for data per epoch: "
          f"{', '.join(str(d['data_wait_s']) for d in details if d['side'] == 'ray')} s; CPU steal per run (%): "
          f"{', '.join(str(d['cpu_steal_percent']) for d in details)}")
    print(json.dumps({**result, "rows": len(texts), "threads": threads, "runs": details}))


if __name__ == "__main__":
    main()
