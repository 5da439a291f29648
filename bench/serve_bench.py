"""Serving throughput: Serve with batching vs without vs a plain FastAPI server vs the raw model.

    python bench/serve_bench.py --model DIR [--json]

Closed-loop load (each client sends its next request when the last one is answered) at each concurrency,
for a fixed time, against 127.0.0.1 only. Prints a table, and with --json the results as JSON on the last line.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from steal import cpu_times, steal_percent  # noqa: E402  (bench/ is on the path as the script's folder)
DATA = ROOT.parent / "shared/data/tweet_sentiment_extraction/train.jsonl"
FALLBACK_TEXTS = ["I love this!", "worst day ever", "going to the store later", "so happy for you", "meh, it was ok"]


def load_texts(path: Path, limit: int = 2000) -> list[str]:
    if not path.is_file():
        return FALLBACK_TEXTS
    rows = (json.loads(line) for line in path.open())
    return [r["text"] for r, _ in zip((r for r in rows if str(r.get("text", "")).strip()), range(limit))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _client(port: int, bodies: list[bytes], offset: int, deadline: float, latencies: list, errors: list) -> None:
    """One keep-alive connection, raw HTTP/1.1: a Python HTTP library would eat the CPU the servers need."""
    reader = writer = None
    i = offset
    while time.perf_counter() < deadline:
        body = bodies[i % len(bodies)]
        i += 1
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
            await asyncio.wait_for(reader.readexactly(length), timeout=30)
            if head[9:12] != b"200":
                raise RuntimeError(head.split(b"\r\n")[0].decode())
            latencies.append(time.perf_counter() - start)
        except Exception as error:  # a failed request counts, and the client reconnects
            errors.append(repr(error))
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)
    if writer is not None:
        writer.close()


def load(port: int, texts: list[str], concurrency: int, duration_s: float, warmup_s: float) -> dict:
    bodies = [json.dumps({"text": t}).encode() for t in texts]

    async def run(seconds: float) -> tuple[list, list, float]:
        latencies, errors = [], []
        start = time.perf_counter()
        await asyncio.gather(*(_client(port, bodies, c * 97, start + seconds, latencies, errors) for c in range(concurrency)))
        return latencies, errors, time.perf_counter() - start

    asyncio.run(run(warmup_s))
    mark = cpu_times()
    latencies, errors, elapsed = asyncio.run(run(duration_s))
    ordered = sorted(latencies) or [float("nan")]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "req_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * ordered[len(ordered) // 2], 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "cpu_steal_percent": steal_percent(mark),
    }


def wait_ready(port: int, timeout_s: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"no /healthz on port {port} after {timeout_s} s")


def plain_server(model: str, port: int, threads: int, quantize: bool) -> None:
    """The baseline: FastAPI + uvicorn, one process, one request at a time through the same Predictor."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    from sam.predict import Predictor
    from sam.serve import PredictRequest

    torch.set_num_threads(threads)
    predictor = Predictor(model, quantize=quantize)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: PredictRequest) -> dict:  # async: requests run one after another, unbatched
        if request.text is not None:
            return predictor.predict([request.text])[0]
        return {"predictions": predictor.predict(request.texts)}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def raw_model(model: str, texts: list[str], threads: int, quantize: bool, batch_size: int, seconds: float = 3.0) -> dict:
    import torch

    from sam.predict import Predictor

    torch.set_num_threads(threads)
    predictor = Predictor(model, quantize=quantize)
    predictor.scores(texts[:batch_size])  # warm-up
    done, start, i, mark = 0, time.perf_counter(), 0, cpu_times()
    while time.perf_counter() - start < seconds:  # as a Serve batch of this size runs: one `scores` call
        predictor.scores(texts[i : i + batch_size])
        done, i = done + batch_size, (i + batch_size) % (len(texts) - batch_size)
    return {"batch_size": batch_size, "texts_per_s": round(done / (time.perf_counter() - start), 1), "cpu_steal_percent": steal_percent(mark)}


def mean_recent_batch(port: int) -> float | None:
    """The deployment's last 64 batch sizes, from its /model endpoint (None for the plain server)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=5) as response:
            sizes = json.load(response)["batching"]["recent_batch_sizes"]
    except (OSError, KeyError, ValueError):
        return None
    return round(statistics.mean(sizes), 1) if sizes else None


def sweep(name: str, port: int, texts: list[str], args: argparse.Namespace) -> list[dict]:
    rows = []
    for concurrency in args.concurrency:
        row = {"server": name, **load(port, texts, concurrency, args.duration, args.warmup), "mean_batch": mean_recent_batch(port)}
        print(f"  {name:<16} c={concurrency:<4} {row['req_per_s']:>8} req/s  p50 {row['p50_ms']:>7} ms  p99 {row['p99_ms']:>7} ms  "
              f"errors {row['errors']}  mean batch {row['mean_batch']}  CPU steal {row['cpu_steal_percent']} %", flush=True)
        rows.append(row)
    return rows


def serve_rows(args: argparse.Namespace, texts: list[str]) -> list[dict]:
    import ray
    from ray import serve

    from sam.serve import ServeArgs, build_app

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for name, batch in (("serve_batched", args.max_batch_size), ("serve_unbatched", 1)):
            # The same queue limit for both, so only batching differs: requests wait in the replica, not in
            # the proxy's retry backoff.
            serve.run(build_app(ServeArgs(model_dir=args.model, max_batch_size=batch, batch_wait_timeout_s=args.batch_wait,
                                          max_ongoing_requests=args.max_ongoing, num_cpus=args.num_cpus,
                                          quantize=args.quantize)), name="sam")
            wait_ready(port)
            rows += sweep(name, port, texts, args)
            serve.delete("sam")
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def plain_rows(args: argparse.Namespace, texts: list[str]) -> list[dict]:
    port = free_port()
    command = [sys.executable, __file__, "--model", args.model, "--plain-server", str(port), "--num-cpus", str(args.num_cpus)] + ["--quantize"] * args.quantize
    server = subprocess.Popen(command, cwd=ROOT)
    try:
        wait_ready(port)
        return sweep("fastapi_plain", port, texts, args)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--data", type=Path, default=DATA, help="jsonl with a text field (default: the shared tweets)")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 32, 128])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per concurrency level")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load first")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-ongoing", type=int, default=256, help="max_ongoing_requests per replica")
    parser.add_argument("--batch-wait", type=float, default=0.005, help="batch_wait_timeout_s")
    parser.add_argument("--num-cpus", type=float, default=1, help="CPUs (and torch threads) per replica and for the plain server")
    parser.add_argument("--quantize", action="store_true", help="dynamic int8 in the Serve replicas and the plain server")
    parser.add_argument("--only", default="serve,plain,raw", help="comma list of parts to run")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    parser.add_argument("--plain-server", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server is not None:
        return plain_server(args.model, args.plain_server, max(1, int(args.num_cpus)), args.quantize)

    texts = load_texts(args.data)
    parts = set(args.only.split(","))
    modes = {k: os.environ[k] for k in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED") if k in os.environ}
    print(f"{len(texts)} texts, {os.cpu_count()} CPUs, model {args.model}, serve env {modes or 'default'}", flush=True)
    # Ray-free parts first: processes of a Ray instance that has just shut down would still take CPU from them.
    plain = plain_rows(args, texts) if "plain" in parts else []
    # Batch 1 too: the raw model's batch-32 rate over its one-at-a-time rate is the most batching can gain.
    raw = [raw_model(args.model, texts, max(1, int(args.num_cpus)), args.quantize, size) for size in (1, 32)] if "raw" in parts else []
    rows = (serve_rows(args, texts) if "serve" in parts else []) + plain

    print(f"\n{'server':<16} {'clients':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'batch':>6} {'steal %':>8}")
    for row in rows:
        print(f"{row['server']:<16} {row['concurrency']:>7} {row['req_per_s']:>8} {row['p50_ms']:>8} {row['p99_ms']:>8} {row['errors']:>6} "
              f"{row['mean_batch'] or '':>6} {row['cpu_steal_percent']!s:>8}")
    for limit in raw:
        print(f"raw model, batch {limit['batch_size']}: {limit['texts_per_s']} texts/s (CPU steal {limit['cpu_steal_percent']} %)")
    if raw:
        print(f"batching can gain at most {raw[1]['texts_per_s'] / raw[0]['texts_per_s']:.2f}x over one text at a time (raw batch 32 / batch 1)")
    by = {(r["server"], r["concurrency"]): r["req_per_s"] for r in rows}
    speedup = share_of_limit = None
    if ("serve_batched", 32) in by and by.get(("fastapi_plain", 32)):
        speedup = round(by[("serve_batched", 32)] / by[("fastapi_plain", 32)], 2)
        print(f"batched Serve / plain FastAPI at 32 clients: {speedup}x")
    if ("serve_batched", 32) in by and raw:
        share_of_limit = round(by[("serve_batched", 32)] / raw[1]["texts_per_s"], 2)
        print(f"batched Serve at 32 clients / raw model at batch 32: {share_of_limit:.0%}")
    if args.json:
        print(json.dumps({"env": modes, "num_cpus": args.num_cpus, "quantize": args.quantize, "rows": rows, "raw_model": raw,
                          "speedup_at_32": speedup, "share_of_raw_limit_at_32": share_of_limit}))


if __name__ == "__main__":
    main()
