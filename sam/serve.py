"""Ray Serve deployment of a model directory: `POST /predict` with dynamic batching, `/healthz`, `/model`.

`serve run serve_app:app [model_dir=DIR] [max_batch_size=32 ...]` calls `build_app` with those arguments;
a Serve config file passes the same ones under `args:`. Each single text goes through one `@serve.batch`
queue per replica, so concurrent clients share forward passes.
"""

import asyncio
import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Annotated, Any, Optional, Union

import click
from fastapi import Body, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ray import serve
from ray.serve import Application
from ray.serve.metrics import Counter, Histogram

from sam import LABELS
from sam.api import (OPENAPI_EXAMPLES, MAX_TEXTS, BatchPrediction, Health, ModelInfo, Prediction, PredictRequest, SingleRequest,
                     ValidationDetail, api)
from sam.config import DEFAULT_MODEL_DIR
from sam.predict import Predictor
from sam.prediction_log import LogSettings, PredictionLog, weights_hash
from sam.runtimes import ModelDirError, Runtime
from sam.locations import model_location
from sam.storage import is_model_uri, redact
from sam.tracking import URI_ENV, tracking_uri

BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
PAGE = Path(__file__).with_name("page.html").read_text()  # the page at GET /: one file, no CDN, works offline


class BatchSettings(BaseModel):
    """The knobs a running replica retunes without a restart (its `user_config`), checked the same way at build
    time (`ServeArgs`) and in `reconfigure`; a knob left out keeps its default."""

    model_config = ConfigDict(extra="forbid")
    max_batch_size: int = Field(32, ge=1, le=MAX_TEXTS)
    batch_wait_timeout_s: float = Field(0.005, ge=0)


class ServeArgs(BatchSettings, LogSettings):
    """The one Serve config: what `serve run serve_app:app key=value ...` takes and what a config file's `args:`
    holds (serve_config.yaml, the RayService's serveConfigV2), the prediction log's `log_*` knobs included. A bad
    value fails `build_app` with its message, once, at deploy."""

    model_dir: str = Field(default_factory=lambda: os.environ.get("SAM_MODEL_DIR", DEFAULT_MODEL_DIR))
    # Serve's default (5) would silently cap every batch at 5. Default: 4 batches, so requests queue in the
    # replica's batcher rather than in the proxy's retry backoff (which collapsed throughput in the benchmark).
    max_ongoing_requests: Optional[int] = Field(None, ge=1)
    num_replicas: int = Field(1, ge=1)
    autoscaling_config: Optional[dict] = None  # replaces num_replicas when given (a dict, or JSON on the CLI)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    # torch, onnx (ONNX Runtime fp32) or onnx-int8; default: onnx on a CPU, where every answer is what the text
    # gets alone, as torch's. int8 activations are scaled per batch: a text's scores move slightly with its neighbours.
    runtime: Optional[Runtime] = None
    quantize: bool = False  # the same as runtime=onnx-int8

    @field_validator("autoscaling_config", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        return json.loads(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _room_for_a_batch(self) -> "ServeArgs":
        if self.max_ongoing_requests is None:
            self.max_ongoing_requests = 4 * self.max_batch_size
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(f"max_ongoing_requests ({self.max_ongoing_requests}) < max_batch_size ({self.max_batch_size}) caps every batch")
        return self


@serve.deployment(name="Sentiment")
@serve.ingress(api)
class SentimentDeployment:
    def __init__(self, model_dir: str, runtime: Optional[str] = None, quantize: bool = False,
                 log_settings: Optional[dict] = None):
        self.predictor = Predictor.in_actor(model_dir, runtime, quantize)
        self.recent_batch_sizes: deque[int] = deque(maxlen=64)  # shown at /model: proof that batching happens
        self.predictions = Counter("sam_predictions", description="Predictions served, by label.", tag_keys=("label",))
        self.batch_sizes = Histogram("sam_batch_size", description="Texts per forward pass.", boundaries=BATCH_SIZE_BUCKETS)
        settings = LogSettings.model_validate(log_settings or {})
        self.log = None
        if settings.log_dir:
            dropped = Counter("sam_log_dropped_rows", description="Prediction log rows dropped: buffer full or storage failing.")
            self.log = PredictionLog(settings, model_dir, weights_hash(self.predictor.directory),
                                     count_tokens=self.predictor.token_counter(), on_drop=dropped.inc)

    def __del__(self):
        """Serve calls this as a replica stops cleanly: the log writes what it holds."""
        if getattr(self, "log", None):
            self.log.close()

    def reconfigure(self, user_config: dict) -> None:
        """Batch knobs live in user_config so `serve deploy` can retune them without restarting replicas."""
        self.batching = BatchSettings.model_validate(user_config).model_dump()
        self.predict_one.set_max_batch_size(self.batching["max_batch_size"])
        self.predict_one.set_batch_wait_timeout_s(self.batching["batch_wait_timeout_s"])

    @serve.batch  # sizes come from reconfigure (user_config), which Serve calls before any request
    async def predict_one(self, texts: list[str]) -> list[dict]:
        # In a thread so the replica's event loop keeps accepting requests: they form the next batch.
        predictions = await asyncio.to_thread(self.predictor.predict, texts)
        self.recent_batch_sizes.append(len(texts))
        self.batch_sizes.observe(len(texts))
        labels = [prediction["sentiment"] for prediction in predictions]
        for label in set(labels):  # per label and batch, not per text: metric updates took 3 % of a loaded replica
            self.predictions.inc(labels.count(label), tags={"label": label})
        return predictions

    @api.post(
        "/predict",
        response_model=Union[Prediction, BatchPrediction],
        responses={
            200: {"description": "A `Prediction` for `text`, a `BatchPrediction` for `texts`"},
            422: {"model": ValidationDetail, "description": "The body is not JSON, or not one of the two forms"},
        },
    )
    async def predict(self, request: Annotated[PredictRequest, Body(openapi_examples=OPENAPI_EXAMPLES)],
                      http: Request) -> dict:
        """`{"text": ...}` gives one prediction; `{"texts": [...]}` gives `{"predictions": [...]}` in order."""
        started = time.perf_counter()
        if isinstance(request, SingleRequest):
            texts, predictions = [request.text], [await self.predict_one(request.text)]
        else:
            texts, predictions = request.texts, list(await asyncio.gather(*(self.predict_one(t) for t in request.texts)))
        if self.log:  # Serve's proxy gives every request an id: the client's X-Request-Id, or one of its own
            self.log.add(http.headers.get("x-request-id", ""), texts, predictions, time.perf_counter() - started)
        return predictions[0] if isinstance(request, SingleRequest) else {"predictions": predictions}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(self) -> str:
        return PAGE

    @api.get("/healthz", response_model=Health)
    def healthz(self) -> dict:
        return {"status": "ok"}  # Serve routes here only once __init__ (the model load) has finished

    @api.get("/model", response_model=ModelInfo)
    def model(self) -> dict:
        metrics = {k: v for k, v in self.predictor.metrics.items() if k != "history"}
        return {
            "model_dir": self.predictor.source,
            "labels": list(LABELS),
            "shape": self.predictor.shape,
            "config": self.predictor.config.to_dict() if self.predictor.config else {},
            "metrics": metrics,
            "device": str(self.predictor.device),
            "runtime": self.predictor.runtime,
            "quantized": self.predictor.quantized,
            "batching": {**self.batching, "recent_batch_sizes": list(self.recent_batch_sizes)},
            "log": self.log and {"log_dir": redact(self.log.settings.log_dir), "share": self.log.settings.log_share,
                                 "written": self.log.written, "dropped": self.log.dropped},
        }


class UnservableModelDir(ModelDirError, click.ClickException):
    """A `ModelDirError` that `serve run` (a click command) prints as one line and exit status 1."""

    def __init__(self, message: str):
        click.ClickException.__init__(self, message)


def build_app(args: ServeArgs) -> Application:
    """The application builder. A bad model directory (or ONNX file) fails here, once, in one line, instead of as a
    replica constructor that Serve retries forever."""
    try:
        Predictor(args.model_dir, runtime=args.runtime, quantize=args.quantize)
    except ModelDirError as error:
        raise UnservableModelDir(f"sam serve: {error}") from None
    scaling = {"autoscaling_config": args.autoscaling_config} if args.autoscaling_config else {"num_replicas": args.num_replicas}
    model_dir = model_location(args.model_dir)
    actor_options = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
    if is_model_uri(model_dir):  # each replica downloads the pinned version through MLflow
        actor_options["runtime_env"] = {"env_vars": {URI_ENV: tracking_uri()}}
    return SentimentDeployment.options(
        max_ongoing_requests=args.max_ongoing_requests,
        ray_actor_options=actor_options,
        user_config=args.model_dump(include=set(BatchSettings.model_fields)),
        **scaling,
    ).bind(model_dir, args.runtime, args.quantize, args.model_dump(include=set(LogSettings.model_fields)))  # each replica's node fetches a URI into its own cache
