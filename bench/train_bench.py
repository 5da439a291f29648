"""Training throughput: one Ray Train worker (Ray Data streaming tokenization, DDP wrapper, reporting)
against a plain PyTorch loop over the same model, batches and thread count, in one run.

    python bench/train_bench.py --data ../shared/data/tweet_sentiment_extraction [--limit-train N] [--json]

One epoch over the full train split by default (about 9 minutes on 2 cores): Ray Data's start-up, which the
epoch pays once (`ray_data_wait_s`), is a fair share of the whole run only on short epochs. The plain loop runs
before and after the Ray epoch and the ratio is against their mean: this machine's speed drifts by 10 % and
more within minutes, and a single plain run before the Ray one turned that drift into the ratio. Each phase
also reports the CPU time the hypervisor gave to other machines (steal): much of it means a noisy figure.
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from sam.config import Config
from sam.batching import length_bucketed
from sam.encoding import encode
from sam.learner import class_weights, make_averaged, make_loss, make_optimizer, make_scheduler, train_step
from sam.models import build_model
from steal import cpu_times, steal_percent


def plain_samples_per_s(config: Config, texts: list[str], labels: np.ndarray, tokenizer) -> float:
    """What a user would write without Ray: tokenize everything, then loop (with the same weight average as
    `train_func`); timed like the Ray epoch."""
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, tokenizer)
    optimizer = make_optimizer(model, config.train)
    window = config.train.batch_size * config.train.bucket_batches
    scheduler = make_scheduler(optimizer, config.train, total_steps=len(texts) // config.train.batch_size + 1)
    loss_fn = make_loss(config.train, class_weights(labels), torch.device("cpu"))
    averaged = make_averaged(model, config.train.ema_decay)
    started = time.perf_counter()
    ids = np.empty(len(texts), dtype=object)
    ids[:] = encode(tokenizer, texts, config.model.max_length)
    rng = np.random.default_rng(config.train.seed)
    samples = 0
    for start in range(0, len(texts), window):
        rows = {"input_ids": ids[start : start + window], "labels": labels[start : start + window]}
        for batch in length_bucketed(rows, config.train.batch_size, tokenizer.pad_token_id, rng):
            train_step(model, batch, loss_fn, optimizer, scheduler, config.train.grad_clip, averaged=averaged)
            samples += len(batch["labels"])
    return samples / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--limit-train", type=int, default=None, help="first N valid rows (default: all)")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    args = parser.parse_args()

    import ray

    from sam.train import split_and_tokenizer, train

    threads = os.cpu_count() or 1
    config = Config().with_flat(data=args.data, limit_train=args.limit_train, epochs=1, torch_threads=threads)
    ray.init(include_dashboard=False, log_to_driver=False)
    # The plain loop gets the same rows, tokenizer and thread count as the Ray worker.
    train_rows, _, tokenizer, _ = split_and_tokenizer(config)
    torch.set_num_threads(threads)
    texts, labels = train_rows["text"].tolist(), train_rows["label"].to_numpy()
    steal, mark = {}, cpu_times()
    plain_before = plain_samples_per_s(config, texts, labels, tokenizer)
    steal["plain_before"], mark = steal_percent(mark), cpu_times()
    with tempfile.TemporaryDirectory() as scratch:
        metrics = train(config, os.path.join(scratch, "model"), storage=os.path.join(scratch, "runs"))
    steal["ray"], mark = steal_percent(mark), cpu_times()
    plain_after = plain_samples_per_s(config, texts, labels, tokenizer)
    steal["plain_after"] = steal_percent(mark)
    ray.shutdown()
    plain = (plain_before + plain_after) / 2
    epoch = metrics["history"][0]
    ray_rate = epoch["samples_per_s"]
    result = {"ray_samples_per_s": round(ray_rate, 1), "plain_samples_per_s": round(plain, 1),
              "ratio": round(ray_rate / plain, 3), "plain_before_samples_per_s": round(plain_before, 1),
              "plain_after_samples_per_s": round(plain_after, 1), "ray_data_wait_s": round(epoch["data_wait_s"], 1),
              "rows": len(train_rows), "threads": threads, "cpu_steal_percent": steal}
    if not args.json:
        print(f"{'loop':<28}{'samples/s':>12}{'CPU steal %':>14}")
        print(f"{'plain PyTorch, before':<28}{plain_before:>12.1f}{steal['plain_before']!s:>14}")
        print(f"{'Ray Train, 1 worker':<28}{ray_rate:>12.1f}{steal['ray']!s:>14}   ({epoch['data_wait_s']:.1f} s of the epoch waiting for Ray Data)")
        print(f"{'plain PyTorch, after':<28}{plain_after:>12.1f}{steal['plain_after']!s:>14}")
        print(f"ratio Ray / mean plain: {ray_rate / plain:.3f}  ({len(train_rows)} rows, {threads} threads)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
