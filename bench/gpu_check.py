"""GPU check without Ray: the foundation's model, training step and batched inference straight on CUDA.

    PYTHONPATH=. python bench/gpu_check.py --data ../shared/data/tweet_sentiment_extraction
    PYTHONPATH=. python bench/gpu_check.py --device cpu --quick      # smoke run of the same code on CPU

Trains a WordPiece tokenizer on a few thousand tweets read straight from train.jsonl, then prints training
samples/s in fp32 and in bf16 autocast (the `learner.autocast` used by Ray Train on GPU), inference texts/s
at batch 1, 32 and 256, and a loss curve that must fall; a table, then JSON on the last line. Exits 0 with
one line when there is no CUDA device, 1 when the loss does not fall or Ray got imported. Uses only torch,
transformers and the Ray-free sam modules, so it runs on a bare GPU machine without the project installed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

LABEL_COUNT = 3
SEED = 42
LABELS = {"fp32": "fp32", "bf16": "bf16 autocast"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/tweet_sentiment_extraction", help="train.jsonl or its directory")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: a smoke run, no bf16")
    parser.add_argument("--quick", action="store_true", help="tiny model and data: seconds on a CPU")
    parser.add_argument("--texts", type=int, default=None, help="tweets used (default 4000, quick 600)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per precision (default 3, quick 6)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size (TrainConfig's default)")
    return parser.parse_args(argv)


def read_tweets(data: str, limit: int) -> tuple[list[str], list[int]]:
    """A seeded sample of the valid rows: non-blank text, label 0..2 (the file has one empty text)."""
    path = Path(data)
    path = path / "train.jsonl" if path.is_dir() else path
    rows = []
    with path.open() as lines:
        for line in lines:
            row = json.loads(line)
            if isinstance(row.get("text"), str) and row["text"].strip() and row.get("label") in range(LABEL_COUNT):
                rows.append((row["text"], row["label"]))
    rows = random.Random(SEED).sample(rows, min(limit, len(rows)))
    return [text for text, _ in rows], [label for _, label in rows]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_run(precision: str, texts, labels, tokenizer, model_config, train_config, device, epochs) -> dict:
    """A fresh, seeded model trained with `learner.train_step` on batches made as train.py makes them
    (length-bucketed windows, `to_device`): samples/s after warm-up, and the losses."""
    import numpy as np

    from sam import learner
    from sam.batching import length_bucketed
    from sam.encoding import encode
    from sam.models import build_model

    torch.manual_seed(SEED)
    model = build_model(model_config, tokenizer).to(device)
    ids = np.empty(len(texts), dtype=object)  # a column of ragged rows, as Ray Data hands them to train.py
    for i, row in enumerate(encode(tokenizer, texts, model_config.max_length)):
        ids[i] = row
    rows = {"input_ids": ids, "labels": np.asarray(labels)}
    size, rng = train_config.batch_size, np.random.default_rng(SEED)
    window = size * train_config.bucket_batches
    # Collated up front (Ray Data's work in train.py); the timed loop is to_device + train_step.
    batches = [batch for start in range(0, len(texts), window)
               for batch in length_bucketed({k: v[start : start + window] for k, v in rows.items()}, size, tokenizer.pad_token_id, rng)]
    steps = len(batches) * epochs
    optimizer = learner.make_optimizer(model, train_config)
    scheduler = learner.make_scheduler(optimizer, train_config, steps)
    loss_fn = learner.make_loss(train_config, learner.class_weights(rows["labels"]), device)
    warmup = min(10, steps // 4)
    losses, samples, started = [], 0, None
    for step in range(steps):
        if step == warmup:
            sync(device)
            started, samples = time.perf_counter(), 0
        batch = learner.to_device(batches[step % len(batches)], device)
        losses.append(learner.train_step(model, batch, loss_fn, optimizer, scheduler, train_config.grad_clip,
                                         bf16=precision == "bf16"))
        samples += len(batch["labels"])
    sync(device)
    return {"samples_per_s": samples / (time.perf_counter() - started), "steps": steps, "model": model, "losses": losses}


@torch.inference_mode()
def inference_rate(model, tokenizer, texts, batch_size: int, max_length: int, device) -> float:
    """Texts/s end to end: encode, pad, forward (bf16 autocast on CUDA), argmax back on the host."""
    from sam.batching import pad_batch
    from sam.encoding import encode
    from sam.learner import autocast

    model.eval()

    def run(chunk):
        batch = pad_batch(encode(tokenizer, chunk, max_length), tokenizer.pad_token_id)
        with autocast(device):
            logits = model(**{k: v.to(device, non_blocking=True) for k, v in batch.items()}).logits
        return logits.argmax(-1).tolist()

    run(texts[:batch_size])  # warm-up: kernels for this shape class
    sync(device)
    started = time.perf_counter()
    for start in range(0, len(texts), batch_size):
        run(texts[start : start + batch_size])
    sync(device)
    return len(texts) / (time.perf_counter() - started)


def curve(losses: list[float], points: int = 8) -> list[float]:
    """Mean loss over `points` equal windows of steps."""
    width = max(1, len(losses) // points)
    return [round(sum(losses[i : i + width]) / len(losses[i : i + width]), 4) for i in range(0, width * points, width)]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: skipped: no CUDA device (torch {torch.__version__}); --device cpu --quick smoke-tests on CPU")
        return 0
    from sam.config import ModelConfig, TrainConfig
    from sam.tokenizer import train_wordpiece

    started = time.perf_counter()
    device = torch.device(args.device)
    texts, labels = read_tweets(args.data, args.texts or (600 if args.quick else 4000))
    if args.quick:
        model_config = ModelConfig(num_layers=1, num_heads=2, d_model=64, d_ff=128, max_length=48, vocab_size=1000, dropout=0.0)
        train_config = TrainConfig(lr=3e-3, warmup_steps=4, batch_size=args.batch_size)
        epochs, inference_texts = args.epochs or 6, {1: 64, 32: len(texts), 256: len(texts)}
    else:
        model_config = ModelConfig()  # the foundation's default encoder
        train_config = TrainConfig(warmup_steps=30, batch_size=args.batch_size)
        epochs, inference_texts = args.epochs or 3, {1: 500, 32: len(texts), 256: len(texts)}
    tokenizer = train_wordpiece(texts, model_config.vocab_size)

    precisions = ["fp32", "bf16"] if device.type == "cuda" else ["fp32"]  # learner.autocast is fp32 on CPU
    runs = {p: train_run(p, texts, labels, tokenizer, model_config, train_config, device, epochs) for p in precisions}
    last = runs[precisions[-1]]
    inference = {b: inference_rate(last["model"], tokenizer, texts[:n], b, model_config.max_length, device)
                 for b, n in inference_texts.items()}
    loss_curve = curve(last["losses"])
    falls = loss_curve[-1] < loss_curve[0]
    ray_imported = "ray" in sys.modules  # the sam modules used here must stay Ray-free

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    params = sum(p.numel() for p in last["model"].parameters())
    print(f"gpu_check on {name}, torch {torch.__version__}, {len(texts)} tweets, {params:,} parameters, "
          f"batch {train_config.batch_size}, {last['steps']} steps per precision")
    print(f"{'training':<22}{'samples/s':>12}")
    for p in precisions:
        print(f"  {LABELS[p]:<20}{runs[p]['samples_per_s']:>12,.0f}")
    print(f"{'inference':<22}{'texts/s':>12}")
    for b, rate in inference.items():
        print(f"  batch {b:<14}{rate:>12,.0f}")
    print(f"loss ({precisions[-1]}): {' -> '.join(f'{x:.3f}' for x in loss_curve)}  {'falls' if falls else 'DOES NOT FALL'}")
    if ray_imported:
        print("ray was imported: a sam module used here now depends on Ray")
    result = {
        "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
        "bf16_supported": device.type == "cuda" and torch.cuda.is_bf16_supported(), "texts": len(texts), "parameters": params,
        "batch_size": train_config.batch_size, "steps": last["steps"],
        "train_samples_per_s": {p: round(r["samples_per_s"], 1) for p, r in runs.items()},
        "bf16_speedup": round(runs["bf16"]["samples_per_s"] / runs["fp32"]["samples_per_s"], 2) if "bf16" in runs else None,
        "inference_texts_per_s": {str(b): round(rate, 1) for b, rate in inference.items()},
        "loss_curve": loss_curve, "loss_falls": falls, "ray_imported": ray_imported,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0 if falls and not ray_imported else 1


if __name__ == "__main__":
    sys.exit(main())
