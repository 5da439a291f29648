"""Ray Serve deployment of a model directory: `POST /predict` with dynamic batching, `/healthz`, `/model`.

`serve run serve_app:app [model_dir=DIR] [max_batch_size=32 ...]` calls `build_app` with those arguments;
a Serve config file passes the same ones under `args:`. Each single text goes through one `@serve.batch`
queue per replica, so concurrent clients share forward passes.
"""

import asyncio
import contextlib
import json
import os
import time
from collections import deque
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import click
from fastapi import Body, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter, Histogram

from sam import LABELS
from sam.api import (OPENAPI_EXAMPLES, MAX_TEXTS, BatchPrediction, Health, ModelInfo, Prediction, PredictRequest, SingleRequest,
                     ValidationDetail, api)
from sam.config import DEFAULT_MODEL_DIR
from sam.predict import Predictor
from sam.prediction_log import LogSettings, PredictionLog, weights_hash
from sam.runtimes import ModelDirError, Runtime
from sam.locations import deployed_model
from sam.storage import is_model_uri, redact
from sam.traffic import Traffic, routes_to_challenger
from sam.tracking import URI_ENV, tracking_uri

BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
MODEL_HEADER = "X-SAM-Model"
# A challenger slower than this is an error and the champion answers: also what frees a request whose challenger
# was deleted (a rollback, a promotion) well inside Serve's 20 s graceful shutdown.
CHALLENGER_TIMEOUT_S = 5.0
MAX_SHADOW_REQUESTS = 256  # per replica: beyond this a slow challenger misses requests (counted), the champion never waits
PAGE = Path(__file__).with_name("page.html").read_text()  # the page at GET /: one file, no CDN, works offline


class BatchSettings(BaseModel):
    """The knobs a running replica retunes without a restart (its `user_config`), checked the same way at build
    time (`ServeArgs`) and in `reconfigure`; a knob left out keeps its default."""

    model_config = ConfigDict(extra="forbid")
    max_batch_size: int = Field(32, ge=1, le=MAX_TEXTS)
    batch_wait_timeout_s: float = Field(0.005, ge=0)


class RoutingSettings(BaseModel):
    """How the ingress shares requests with a challenger, retuned like the batch knobs (a rollout's steps)."""

    model_config = ConfigDict(extra="forbid")
    challenger_share: float = Field(0.1, ge=0, le=1)  # split: the share of request keys the challenger answers
    challenger_mode: Literal["split", "shadow"] = "split"  # shadow: the champion answers all, the challenger scores all


class ReplicaSettings(BatchSettings, RoutingSettings):
    """The ingress's user_config."""


class ServeArgs(BatchSettings, RoutingSettings, LogSettings):
    """The one Serve config: what `serve run serve_app:app key=value ...` takes and what a config file's `args:`
    holds (serve_config.yaml, the RayService's serveConfigV2), the prediction log's `log_*` and the challenger's
    knobs included. A bad value fails `build_app` with its message, once, at deploy."""

    model_dir: str = Field(default_factory=lambda: os.environ.get("SAM_MODEL_DIR", DEFAULT_MODEL_DIR))
    challenger_dir: Optional[str] = None  # a second model beside model_dir, on its own deployment (docs/deploy.md)
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


class ModelReplica:
    """One model in a replica: loaded once, a `@serve.batch` queue that concurrent requests share, its metrics
    and its own prediction log. The champion (the ingress) and the challenger are each a deployment of it."""

    SETTINGS: type[BaseModel] = BatchSettings  # what its user_config holds

    def __init__(self, model_dir: str, name: str, runtime: Optional[str] = None, quantize: bool = False,
                 log_settings: Optional[dict] = None):
        self.predictor = Predictor.in_actor(model_dir, runtime, quantize)
        self.name = name  # what each answer, the X-SAM-Model header and the log call this model
        self.recent_batch_sizes: deque[int] = deque(maxlen=64)  # shown at /model: proof that batching happens
        self.predictions = Counter("sam_predictions", description="Predictions served, by label.", tag_keys=("label",))
        self.batch_sizes = Histogram("sam_batch_size", description="Texts per forward pass.", boundaries=BATCH_SIZE_BUCKETS)
        settings = LogSettings.model_validate(log_settings or {})
        self.log = None
        if settings.log_dir:
            dropped = Counter("sam_log_dropped_rows", description="Prediction log rows dropped: buffer full or storage failing.")
            self.log = PredictionLog(settings, name, weights_hash(self.predictor.directory),
                                     count_tokens=self.predictor.token_counter(), on_drop=dropped.inc)

    def __del__(self):
        """Serve calls this as a replica stops cleanly: the log writes what it holds."""
        if getattr(self, "log", None):
            self.log.close()

    def reconfigure(self, user_config: dict) -> None:
        """Batch knobs live in user_config so `serve deploy` can retune them without restarting replicas."""
        self.settings = self.SETTINGS.model_validate(user_config)
        self.batching = self.settings.model_dump(include=set(BatchSettings.model_fields))
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
        return [{**prediction, "model": self.name} for prediction in predictions]

    async def predict_texts(self, texts: list[str], request_id: str, served: bool = True) -> list[dict]:
        """A request's texts through the batcher, logged under its request id; `served`: the client got these
        answers (False: shadow scoring)."""
        started = time.perf_counter()
        predictions = list(await asyncio.gather(*(self.predict_one(text) for text in texts)))
        if self.log:
            self.log.add(request_id, texts, predictions, time.perf_counter() - started, served=served)
        return predictions

    def info(self) -> dict:
        metrics = {k: v for k, v in self.predictor.metrics.items() if k != "history"}
        return {
            "model": self.name,
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


@serve.deployment(name="Challenger")
class ChallengerDeployment(ModelReplica):
    """The model on trial: answers the ingress's share of requests (split) or scores them all unseen (shadow)."""


@serve.deployment(name="Sentiment")
@serve.ingress(api)
class SentimentDeployment(ModelReplica):
    """The champion and the HTTP routes: answers itself, or hands a request to the challenger by its key's hash."""

    SETTINGS = ReplicaSettings

    def __init__(self, model_dir: str, name: str, runtime: Optional[str] = None, quantize: bool = False,
                 log_settings: Optional[dict] = None, challenger: Optional[DeploymentHandle] = None,
                 challenger_name: Optional[str] = None):
        super().__init__(model_dir, name, runtime, quantize, log_settings)
        self.challenger, self.challenger_name = challenger, challenger_name
        self.traffic = Traffic()
        self.shadows: set[asyncio.Task] = set()  # held so they finish; bounded so a slow challenger cannot pile up

    async def _timed(self, model: str, answering) -> list[dict]:
        """`answering`'s predictions, its latency and any error counted against `model`."""
        started = time.perf_counter()
        try:
            predictions = await answering
        except Exception:
            self.traffic.record(model, time.perf_counter() - started, error=True)
            raise
        self.traffic.record(model, time.perf_counter() - started)
        return predictions

    def _ask_challenger(self, texts: list[str], key: str, served: bool = True):
        return self._timed(self.challenger_name, asyncio.wait_for(self.challenger.predict_texts.remote(texts, key, served=served),
                                                                  CHALLENGER_TIMEOUT_S))

    async def _answer(self, texts: list[str], key: str) -> list[dict]:
        routing = self.settings
        if self.challenger and routing.challenger_mode == "split" and routes_to_challenger(key, routing.challenger_share):
            with contextlib.suppress(Exception):  # counted against the challenger, and the champion answers instead
                return await self._ask_challenger(texts, key)
        predictions = await self._timed(self.name, self.predict_texts(texts, key))
        if self.challenger and routing.challenger_mode == "shadow":
            self._shadow(texts, key, [p["sentiment"] for p in predictions])
        return predictions

    def _shadow(self, texts: list[str], key: str, champion: list[str]) -> None:
        if len(self.shadows) >= MAX_SHADOW_REQUESTS:
            self.traffic.shadow["skipped"] += 1
            return
        task = asyncio.create_task(self._score_in_shadow(texts, key, champion))
        self.shadows.add(task)
        task.add_done_callback(self.shadows.discard)

    async def _score_in_shadow(self, texts: list[str], key: str, champion: list[str]) -> None:
        try:
            predictions = await self._ask_challenger(texts, key, served=False)
        except Exception:
            self.traffic.shadow["failed"] += 1
            return
        self.traffic.compared(champion, [p["sentiment"] for p in predictions])

    @api.post(
        "/predict",
        response_model=Union[Prediction, BatchPrediction],
        responses={
            200: {"description": "A `Prediction` for `text`, a `BatchPrediction` for `texts`; the `X-SAM-Model` "
                                 "header names the model that answered", "headers": {MODEL_HEADER: {"schema": {"type": "string"}}}},
            422: {"model": ValidationDetail, "description": "The body is not JSON, or not one of the two forms"},
        },
    )
    async def predict(self, request: Annotated[PredictRequest, Body(openapi_examples=OPENAPI_EXAMPLES)],
                      http: Request, response: Response) -> dict:
        """`{"text": ...}` gives one prediction; `{"texts": [...]}` gives `{"predictions": [...]}` in order."""
        texts = [request.text] if isinstance(request, SingleRequest) else request.texts
        # Serve's proxy gives every request an id: the client's X-Request-Id, or one of its own
        predictions = await self._answer(texts, http.headers.get("x-request-id", ""))
        response.headers[MODEL_HEADER] = predictions[0]["model"]
        return predictions[0] if isinstance(request, SingleRequest) else {"predictions": predictions}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(self) -> str:
        return PAGE

    @api.get("/healthz", response_model=Health)
    def healthz(self) -> dict:
        return {"status": "ok"}  # Serve routes here only once __init__ (the model load) has finished

    @api.get("/model", response_model=ModelInfo)
    async def model(self) -> dict:
        challenger = None
        if self.challenger:
            challenger = {**await self.challenger.info.remote(), "share": self.settings.challenger_share,
                          "mode": self.settings.challenger_mode}
        return {**self.info(), "challenger": challenger, "traffic": self.traffic.snapshot()}


class UnservableModelDir(ModelDirError, click.ClickException):
    """A `ModelDirError` that `serve run` (a click command) prints as one line and exit status 1."""

    def __init__(self, message: str):
        click.ClickException.__init__(self, message)


def build_app(args: ServeArgs) -> Application:
    """The application builder. A bad model directory (or ONNX file), the champion's or the challenger's, fails
    here, once, in one line, instead of as a replica constructor that Serve retries forever."""
    for key in ("model_dir", "challenger_dir"):
        try:
            if getattr(args, key):
                Predictor(getattr(args, key), runtime=args.runtime, quantize=args.quantize)
        except ModelDirError as error:
            raise UnservableModelDir(f"sam serve: {key}: {error}") from None
    scaling = {"autoscaling_config": args.autoscaling_config} if args.autoscaling_config else {"num_replicas": args.num_replicas}
    batching = args.model_dump(include=set(BatchSettings.model_fields))
    log_settings = args.model_dump(include=set(LogSettings.model_fields))

    def deployment(cls, path: str, user_config: dict, **handles):
        location, name = deployed_model(path)  # each replica's node fetches a URI into its own cache
        actor_options = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
        if is_model_uri(location):  # each replica downloads the pinned version through MLflow
            actor_options["runtime_env"] = {"env_vars": {URI_ENV: tracking_uri()}}
        bound = cls.options(max_ongoing_requests=args.max_ongoing_requests, ray_actor_options=actor_options,
                            user_config=user_config, **scaling)
        return bound.bind(location, name, args.runtime, args.quantize, log_settings, **handles), name

    handles = {}
    if args.challenger_dir:
        handles["challenger"], handles["challenger_name"] = deployment(ChallengerDeployment, args.challenger_dir, batching)
    routing = {**batching, **args.model_dump(include=set(RoutingSettings.model_fields))}
    return deployment(SentimentDeployment, args.model_dir, routing, **handles)[0]
