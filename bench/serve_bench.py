"""Serving throughput: batched Ray Serve (candidate) vs a plain FastAPI server (baseline), in interleaved rounds.

    python bench/serve_bench.py --model DIR [--quantize] [--concurrency 1,32,128] [--rounds 5] [--json]
    python bench/serve_bench.py --model DIR --device cuda [--num-gpus 0.5]   # both servers on the same GPU
    python bench/serve_bench.py --model DIR --device cuda --dry-run          # the plan, nothing started
    python bench/serve_bench.py --model DIR --log-dir /tmp/log               # Serve with the prediction log vs without
    python bench/serve_bench.py --model DIR --shadow DIR2 --concurrency 1,8  # Serve with a shadow challenger vs without

Both servers stay up for the whole run (the plain one in a subprocess, Serve in Ray). At each concurrency,
closed-loop clients (each sends its next request when the last one is answered) load Serve and the plain
server in turn for `--rounds` rounds of `--duration` seconds, against 127.0.0.1 only: this machine drifts by
10 % and more within minutes, so the verdict is the median Serve / plain ratio and its range, not one run.
The raw model at batch 1 and at the largest batch bounds what batching can gain. Prints a table, then JSON on
the last line (only the JSON with --json).
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rounds import interleaved, summary  # noqa: E402  (bench/ is on the path as the script's folder)
from steal import cpu_times, steal_percent  # noqa: E402

DATA = ROOT.parent / "shared/data/tweet_sentiment_extraction"
TEXTS = 2000
HEADLINE_CLIENTS = 32  # the level whose ratios head the JSON when swept (else the first level)
GPU_RAW_BATCH = 256  # a GPU only shows its batch throughput at sizes a CPU could not afford
FAST_MODE_ENV = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")


def load_texts(data: Path, limit: int = TEXTS) -> list[str]:
    """The first `limit` valid tweets, read by the project's own reader (Ray Data: call after ray.init)."""
    from sam.data import load_frame

    frame, _ = load_frame(str(data), "train", limit=limit)
    return frame["text"].tolist()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _client(port: int, bodies: list[bytes], offset: int, deadline: float, latencies: list, errors: list,
                  path: bytes = b"/predict") -> None:
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
            writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (path, len(body), body))
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


def load(port: int, texts: list[str], concurrency: int, duration_s: float, warmup_s: float, path: str = "/predict") -> dict:
    bodies = [json.dumps({"text": t}).encode() for t in texts]

    async def run(seconds: float) -> tuple[list, list, float]:
        latencies, errors = [], []
        start = time.perf_counter()
        await asyncio.gather(*(_client(port, bodies, c * 97, start + seconds, latencies, errors, path.encode()) for c in range(concurrency)))
        return latencies, errors, time.perf_counter() - start

    asyncio.run(run(warmup_s))
    mark = cpu_times()
    latencies, errors, elapsed = asyncio.run(run(duration_s))
    ordered = sorted(latencies) or [float("nan")]
    return {
        "req_per_s": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
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


def plain_server(model: str, port: int, threads: int, device: str, runtime: str | None) -> None:
    """The baseline: FastAPI + uvicorn, one process, one request at a time through the same Predictor."""
    import uvicorn
    from fastapi import FastAPI

    from sam.predict import Predictor
    from sam.api import PredictRequest, SingleRequest

    predictor = Predictor(model, device=device, runtime=runtime, threads=threads)
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: PredictRequest) -> dict:  # async: requests run one after another, unbatched
        if isinstance(request, SingleRequest):
            return predictor.predict([request.text])[0]
        return {"predictions": predictor.predict(request.texts)}

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def texts_per_s(predictor, texts: list[str], batch_size: int, seconds: float) -> float:
    """Texts/s of `predictor.scores` alone over `seconds`, one call per batch as a Serve batch of that size runs."""
    predictor.scores(texts[:batch_size])  # warm-up (and CUDA kernels' first launch)
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:  # `scores` returns on the CPU, so a GPU batch is finished
        batch = [texts[(i + k) % len(texts)] for k in range(batch_size)]  # always a full batch, however few texts
        predictor.scores(batch)
        done, i = done + batch_size, (i + batch_size) % len(texts)
    return round(done / (time.perf_counter() - start), 1)


def raw_model(args: argparse.Namespace, texts: list[str], seconds: float = 3.0) -> list[dict]:
    """The raw model's texts/s at batch 1 and at the largest batch, with the CPU steal while each ran."""
    from sam.predict import Predictor

    predictor = Predictor(args.model, device=args.device, runtime=runtime(args), threads=threads(args))
    rows = []
    for batch_size in raw_batch_sizes(args):
        mark = cpu_times()
        rows.append({"batch_size": batch_size, "texts_per_s": texts_per_s(predictor, texts, batch_size, seconds),
                     "cpu_steal_percent": steal_percent(mark)})
    return rows


def mean_recent_batch(port: int) -> float | None:
    """Mean of the deployment's last 64 batch sizes, from its /model endpoint."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=5) as response:
            sizes = json.load(response)["batching"]["recent_batch_sizes"]
    except (OSError, KeyError, ValueError):
        return None
    return round(statistics.mean(sizes), 1) if sizes else None


def threads(args: argparse.Namespace) -> int:
    return max(1, int(args.num_cpus))


def runtime(args: argparse.Namespace) -> str | None:
    """The one runtime of the replica, the plain server and the raw model (default: the device's, as Serve's);
    int8 is a CPU runtime."""
    if args.quantize:
        return "onnx-int8" if args.device == "cpu" else None
    return args.runtime


def raw_batch_sizes(args: argparse.Namespace) -> list[int]:
    return sorted({1, args.max_batch_size} | ({GPU_RAW_BATCH} if args.device == "cuda" else set()))


def serve_args(args: argparse.Namespace, candidate: bool = True):
    """The app under test; `candidate=False`: the same app without the log or the shadow it is compared with."""
    from sam.serve import ServeArgs

    variant = {"log_dir": args.log_dir, "challenger_dir": args.shadow, "challenger_mode": "shadow"} if candidate else {}
    return ServeArgs(model_dir=args.model, max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait,
                     max_ongoing_requests=args.max_ongoing, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                     runtime=runtime(args), log_flush_s=args.log_flush_s, **variant)


def against_itself(args: argparse.Namespace) -> bool:
    """The baseline is the same Serve app without the log or the shadow, not the plain server."""
    return bool(args.log_dir or args.shadow)


def plain_command(args: argparse.Namespace, port: int) -> list[str]:
    return [sys.executable, __file__, "--model", args.model, "--plain-server", str(port), "--num-cpus", str(args.num_cpus),
            "--device", args.device] + (["--runtime", runtime(args)] if runtime(args) else [])


@contextlib.contextmanager
def plain_running(args: argparse.Namespace):
    """The plain server's port, for as long as the block runs."""
    port = free_port()
    server = subprocess.Popen(plain_command(args, port), cwd=ROOT)
    try:
        wait_ready(port)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


@contextlib.contextmanager
def serve_running(args: argparse.Namespace):
    """The batched deployment's port, for as long as the block runs (Ray must be up). With --log-dir (--shadow), it
    keeps the prediction log (scores every request with a shadow challenger too), and the same app without answers
    under /baseline."""
    from ray import serve

    from sam.serve import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(serve_args(args)), name="sam")
        if against_itself(args):
            serve.run(build_app(serve_args(args, candidate=False)), name="baseline", route_prefix="/baseline")
        wait_ready(port)
        yield port
    finally:
        serve.shutdown()


def round_line(concurrency: int, index: int, serve: dict, plain: dict, ratio: float | None) -> str:
    """A round's figures for both servers, as one row under TABLE_HEADER."""
    errors, steal = f"{serve['errors']}/{plain['errors']}", f"{serve['cpu_steal_percent']}/{plain['cpu_steal_percent']}"
    return (f"{concurrency:>7} {index + 1:>5} | {serve['req_per_s']:>11} {serve['p50_ms']:>7} {serve['p99_ms']:>7} "
            f"{serve['mean_batch'] or '':>5} | {plain['req_per_s']:>11} {plain['p50_ms']:>7} {plain['p99_ms']:>7} | "
            f"{'n/a' if ratio is None else f'{ratio:.2f}x':>6} {errors:>11} {steal:>11}")


TABLE_HEADER = (f"{'clients':>7} {'round':>5} | {'Serve req/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'batch':>5} | "
                f"{'plain req/s':>11} {'p50 ms':>7} {'p99 ms':>7} | {'ratio':>6} {'errors S/P':>11} {'steal % S/P':>11}")


def compare(concurrency: int, serve_target: tuple[int, str], plain_target: tuple[int, str], texts: list[str],
            args: argparse.Namespace, say) -> dict:
    """Interleaved rounds at one concurrency; each round keeps both sides' full rows. A target: (port, path)."""
    rows = {"serve": [], "plain": []}

    def side(name: str, target: tuple[int, str]):
        port, path = target

        def run() -> float:
            row = load(port, texts, concurrency, args.duration, args.warmup, path)
            if name == "serve":
                row["mean_batch"] = mean_recent_batch(port)
            rows[name].append(row)
            return row["req_per_s"]
        return run

    result = interleaved(side("serve", serve_target), side("plain", plain_target), args.rounds,
                         on_round=lambda i, r: say(round_line(concurrency, i, rows["serve"][i], rows["plain"][i], r["ratio"]), flush=True))
    rounds = [{"ratio": r, "serve": s, "plain": p} for r, s, p in zip(result["ratios"], rows["serve"], rows["plain"])]
    p50_ratios = [round(s["p50_ms"] / p["p50_ms"], 3) for s, p in zip(rows["serve"], rows["plain"])]
    return {"concurrency": concurrency, **{k: v for k, v in result.items() if k != "rounds"}, "rounds": rounds,
            "p50_ratios": p50_ratios, "median_p50_ratio": statistics.median(p50_ratios)}


def sides(args: argparse.Namespace) -> tuple[str, str]:
    if args.shadow:
        return "Serve with a shadow", "Serve without"
    return ("Serve with the log", "Serve without") if args.log_dir else ("batched Serve", "plain FastAPI")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model directory")
    parser.add_argument("--data", type=Path, default=DATA, help=f"tweets for sam.data.load_frame, first {TEXTS} valid ones (default: the shared set)")
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=None,
                        help="comma list of client counts, rounds at each (default 32 on CPU, 1,32,128 on a GPU)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved Serve/plain rounds per concurrency")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per side and round")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of unmeasured load before each measurement")
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-ongoing", type=int, default=256, help="max_ongoing_requests of the replica")
    parser.add_argument("--batch-wait", type=float, default=0.005, help="batch_wait_timeout_s")
    parser.add_argument("--num-cpus", type=float, default=1, help="CPUs (and torch threads) for the replica and the plain server")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="where both servers and the raw model run (default: cuda when there is one)")
    parser.add_argument("--num-gpus", type=float, default=None, help="the replica's GPU share (default 1 on cuda, 0 on cpu)")
    parser.add_argument("--runtime", choices=["torch", "onnx", "onnx-int8"], default=None,
                        help="the replica's, the plain server's and the raw model's runtime (default: the device's, as Serve's)")
    parser.add_argument("--quantize", action="store_true", help="the same as --runtime onnx-int8")
    parser.add_argument("--log-dir", default=None, help="the candidate keeps the prediction log here; the baseline is the "
                        "same Serve app without it (instead of the plain server)")
    parser.add_argument("--log-flush-s", type=float, default=10.0, help="the log's flush interval, with --log-dir")
    parser.add_argument("--shadow", default=None, metavar="DIR", help="the candidate scores every request with this "
                        "challenger in shadow too; the baseline is the same app without")
    parser.add_argument("--dry-run", action="store_true", help="print the plan as JSON and start nothing")
    parser.add_argument("--json", action="store_true", help="print only the JSON line")
    parser.add_argument("--plain-server", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device is None:
        import torch

        args.device = "cuda" if (args.num_gpus or 0) > 0 or torch.cuda.is_available() else "cpu"
    if args.num_gpus is None:
        args.num_gpus = 1.0 if args.device == "cuda" else 0.0
    if (args.device == "cuda") != (args.num_gpus > 0):  # else the replica and the plain server sit on different devices
        parser.error(f"--device {args.device} with --num-gpus {args.num_gpus}: both servers must share a device, and the replica runs on a GPU exactly when --num-gpus > 0")
    if args.concurrency is None:
        args.concurrency = [1, 32, 128] if args.device == "cuda" else [HEADLINE_CLIENTS]
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def plan(args: argparse.Namespace) -> dict:
    return {"device": args.device, "num_gpus": args.num_gpus, "runtime": runtime(args), "concurrency": args.concurrency,
            "rounds": args.rounds, "duration_s": args.duration, "raw_batch_sizes": raw_batch_sizes(args),
            "serve": serve_args(args).model_dump(), "plain_server": plain_command(args, 0)}


def main() -> None:
    args = parse_args()
    if args.plain_server is not None:
        return plain_server(args.model, args.plain_server, threads(args), args.device, runtime(args))
    if args.dry_run:
        return print(json.dumps(plan(args)))
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            sys.exit("serve_bench: --device cuda, but torch sees no CUDA device")
    say = (lambda *a, **k: None) if args.json else print
    modes = {k: os.environ[k] for k in FAST_MODE_ENV if k in os.environ}

    import ray

    deployments = 1 + against_itself(args) + bool(args.shadow)  # each asks for --num-cpus of Ray's logical CPUs
    ray.init(num_cpus=max(os.cpu_count(), math.ceil(deployments * args.num_cpus)), include_dashboard=False, log_to_driver=False)
    try:
        texts = load_texts(args.data)
        say(f"{len(texts)} texts, {os.cpu_count()} CPUs, device {args.device}, model {args.model}, serve env {modes or 'default'}", flush=True)
        raw = raw_model(args, texts)  # before the servers start, so they take nothing from it
        with contextlib.nullcontext() if against_itself(args) else plain_running(args) as plain_port, serve_running(args) as serve_port:
            baseline = (serve_port, "/baseline/predict") if against_itself(args) else (plain_port, "/predict")
            say(TABLE_HEADER, flush=True)
            mark = cpu_times()
            levels = [compare(c, (serve_port, "/predict"), baseline, texts, args, say) for c in args.concurrency]
            steal = steal_percent(mark)
    finally:
        ray.shutdown()

    headline = next((level for level in levels if level["concurrency"] == HEADLINE_CLIENTS), levels[0])
    by_size = {r["batch_size"]: r["texts_per_s"] for r in raw}
    ceiling = round(by_size[args.max_batch_size] / by_size[1], 2)
    serve_median = statistics.median(r["serve"]["req_per_s"] for r in headline["rounds"])
    share_of_raw = round(serve_median / by_size[args.max_batch_size], 2)
    say(f"\n{TABLE_HEADER}")
    for level in levels:
        for i, r in enumerate(level["rounds"]):
            say(round_line(level["concurrency"], i, r["serve"], r["plain"], r["ratio"]))
    for level in levels:
        say(f"{level['concurrency']:>4} clients: {summary(level, *sides(args))}")
        say(f"{level['concurrency']:>4} clients: p50 {sides(args)[0]} / {sides(args)[1]}: median {level['median_p50_ratio']}x "
            f"(range {min(level['p50_ratios'])}-{max(level['p50_ratios'])})")
    for row in raw:
        say(f"raw model on {args.device}, batch {row['batch_size']:>3}: {row['texts_per_s']:>8} texts/s "
            f"({row['texts_per_s'] / by_size[1]:.2f}x batch 1, CPU steal {row['cpu_steal_percent']} %)")
    say(f"batching can gain at most {ceiling}x (raw batch {args.max_batch_size} / batch 1); batched Serve at "
        f"{headline['concurrency']} clients (median) reaches {share_of_raw:.0%} of raw batch {args.max_batch_size}; CPU steal {steal} %")
    print(json.dumps({
        "env": modes, "log_dir": args.log_dir, "shadow": args.shadow, "device": args.device, "num_gpus": args.num_gpus, "num_cpus": args.num_cpus, "runtime": runtime(args),
        "rounds": args.rounds, "duration_s": args.duration, "concurrency": headline["concurrency"],
        "ratios": headline["ratios"], "median_ratio": headline["median_ratio"],
        "min_ratio": headline["min_ratio"], "max_ratio": headline["max_ratio"],
        "serve_req_per_s": [r["serve"]["req_per_s"] for r in headline["rounds"]],
        "plain_req_per_s": [r["plain"]["req_per_s"] for r in headline["rounds"]],
        "errors": {side: sum(r[side]["errors"] for level in levels for r in level["rounds"]) for side in ("serve", "plain")},
        "levels": levels, "raw_model": raw, "batching_ceiling": ceiling, "share_of_raw_limit": share_of_raw,
        "cpu_steal_percent": steal,
    }))


if __name__ == "__main__":
    main()
