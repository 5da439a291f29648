"""Ray Serve deployment of a model directory: `POST /predict` with dynamic batching, `/healthz`, `/model`.

`serve run serve_app:app [model_dir=DIR] [max_batch_size=32 ...]` calls `build_app` with those arguments;
a Serve config file passes the same ones under `args:`. Each single text goes through one `@serve.batch`
queue per replica, so concurrent clients share forward passes.
"""

import asyncio
import json
import logging
import os
import re
from collections import deque
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import click
import ray
import torch
from fastapi import Body, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, StrictStr, Tag, create_model, field_validator,
                      model_validator)
from ray import serve
from ray.serve import Application
from ray.serve.metrics import Counter, Histogram

from sam import LABELS
from sam.config import DEFAULT_MODEL_DIR
from sam.encoding import MAX_TEXT_CHARS
from sam.predict import ModelDirError, Predictor, check_model_dir
from sam.storage import is_model_uri, model_location
from sam.tracking import URI_ENV, tracking_uri

log = logging.getLogger("ray.serve")

MAX_TEXTS = 256  # per request: a bigger list is a bulk job, not a request
MAX_BODY_BYTES = 1 << 20  # 256 texts of ordinary tweets fit with room to spare
MAX_HEADER_BYTES = 16 << 10  # as h11 and Node: the proxy (uvicorn with httptools) has no limit of its own
BATCH_SIZE_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
PAGE = Path(__file__).with_name("page.html").read_text()  # the page at GET /: one file, no CDN, works offline


# What `str.strip` removes (every code point `str.isspace` calls whitespace), spelled out: JSON Schema patterns
# are ECMA-262 regexes, whose `\s` is a different set, so `\S` would let the schema and the app disagree.
NOT_BLANK = re.compile(r"[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
EXACTLY_ONE = 'give exactly one of "text" (a string) or "texts" (a list of strings)'


def _not_blank(text: str) -> str:
    if not NOT_BLANK.search(text):
        raise ValueError("text is blank")
    return text


Text = Annotated[
    StrictStr,
    Field(
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description=f"A tweet: 1 to {MAX_TEXT_CHARS} characters, not all whitespace (unpaired surrogates are not text)",
        json_schema_extra={"pattern": NOT_BLANK.pattern},  # the blank rule, also in the schema; the validator's message
    ),
    AfterValidator(_not_blank),
]


class SingleRequest(BaseModel):
    """One tweet, answered with one `Prediction`."""

    model_config = ConfigDict(extra="forbid")
    text: Text


class BatchRequest(BaseModel):
    """A list of tweets, answered with a `BatchPrediction` in the same order."""

    model_config = ConfigDict(extra="forbid")
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS)]


def _request_form(body: Any) -> Optional[str]:
    """The tag of the model a body's one key names. None for any other body, so it gets the one `EXACTLY_ONE`
    error rather than each model's own."""
    if not isinstance(body, dict) or ("text" in body) == ("texts" in body):
        return None
    return "single" if "text" in body else "batch"


# The /predict body: the schema's `oneOf` says "exactly one of text or texts", so a body valid there is accepted.
PredictRequest = Annotated[
    Union[Annotated[SingleRequest, Tag("single")], Annotated[BatchRequest, Tag("batch")]],
    # A body that is neither form gets one message naming both, in the words clients already match on.
    Discriminator(_request_form, custom_error_type="exactly_one", custom_error_message=f"Value error, {EXACTLY_ONE}"),
]

Probability = Annotated[float, Field(ge=0, le=1)]
Scores = create_model("Scores", **{label: (Probability, ...) for label in LABELS})  # one field per label, in order


class Prediction(BaseModel):
    sentiment: Literal[LABELS]
    label: Annotated[int, Field(ge=0, le=len(LABELS) - 1, description="index of `sentiment` in the labels")]
    confidence: Annotated[Probability, Field(description="the highest of `scores`")]
    scores: Scores


class BatchPrediction(BaseModel):
    predictions: list[Prediction] = Field(description="one per text, in the request's order")


class Health(BaseModel):
    status: Literal["ok"]


class Batching(BaseModel):
    max_batch_size: int
    batch_wait_timeout_s: float
    recent_batch_sizes: list[int] = Field(description="texts per forward pass, the last 64 passes")


class ModelInfo(BaseModel):
    model_dir: str
    labels: list[Literal[LABELS]]
    config: dict[str, Any]
    metrics: dict[str, Any]
    device: str
    quantized: bool
    batching: Batching


class Detail(BaseModel):
    """A refusal: why, in words."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[Union[str, int]]
    msg: str
    type: str
    ctx: Optional[dict[str, Any]] = None


class ValidationDetail(BaseModel):
    """What is wrong with a body: one issue per problem, at its location (`loc`), without echoing the input."""

    detail: list[ValidationIssue]


class BatchSettings(BaseModel):
    """The knobs a running replica retunes without a restart (its `user_config`), checked the same way at build
    time (`ServeArgs`) and in `reconfigure`; a knob left out keeps its default."""

    model_config = ConfigDict(extra="forbid")
    max_batch_size: int = Field(32, ge=1, le=MAX_TEXTS)
    batch_wait_timeout_s: float = Field(0.005, ge=0)


class ServeArgs(BatchSettings):
    """The one Serve config: what `serve run serve_app:app key=value ...` takes and what a config file's `args:`
    holds (serve_config.yaml, the RayService's serveConfigV2). A bad value fails `build_app` with its message,
    once, at deploy."""

    model_dir: str = Field(default_factory=lambda: os.environ.get("SAM_MODEL_DIR", DEFAULT_MODEL_DIR))
    # Serve's default (5) would silently cap every batch at 5. Default: 4 batches, so requests queue in the
    # replica's batcher rather than in the proxy's retry backoff (which collapsed throughput in the benchmark).
    max_ongoing_requests: Optional[int] = Field(None, ge=1)
    num_replicas: int = Field(1, ge=1)
    autoscaling_config: Optional[dict] = None  # replaces num_replicas when given (a dict, or JSON on the CLI)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    # Dynamic int8 Linear layers (CPU only): twice the throughput at the same validation accuracy (docs/benchmarks.md), but
    # activations are scaled per batch, so a text's scores move slightly with its batch neighbours. Off keeps
    # every answer exactly what the text gets alone.
    quantize: bool = False

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


class BodyLimit:
    """ASGI middleware: refuses headers over MAX_HEADER_BYTES (431), and bodies over `max_bytes` (413) from
    Content-Length or while streaming, before anything parses them, then replays the buffered body to the app."""

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            return await self._refuse(send, 431)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await self._refuse(send, 413 if length.isdigit() else 400)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send, 413)
            more = message.get("more_body", False)
        body = b"".join(chunks)

        async def replay():
            nonlocal body
            if body is None:
                return await receive()  # after the body: wait for a disconnect as the app expects
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        await self.app(scope, replay, send)

    async def _refuse(self, send, status: int) -> None:
        detail = {413: f"request body over {self.max_bytes} bytes", 431: f"request headers over {MAX_HEADER_BYTES} bytes"}.get(status, "bad Content-Length")
        payload = json.dumps({"detail": detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


# BodyLimit's refusals, on every route; a 400 also comes from FastAPI (a body it cannot parse as JSON at all) and,
# in plain text, from the HTTP server (a malformed request, such as a Content-Length that is not a number).
LIMIT_RESPONSES = {
    400: {
        "model": Detail,
        "description": "A malformed request (plain text), or a body that is not UTF-8 or nests too deep to parse",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    413: {"model": Detail, "description": f"Request body over {MAX_BODY_BYTES} bytes"},
    431: {"model": Detail, "description": f"Request headers over {MAX_HEADER_BYTES} bytes"},
}
EXAMPLES = {
    "single": {"summary": "One tweet", "value": {"text": "I love the new features in this app!"}},
    "batch": {"summary": "A batch of tweets", "value": {"texts": ["worst day ever, so sad and tired", "the bus comes at 8"]}},
}

api = FastAPI(
    title="SAM tweet sentiment",
    description="Negative / Neutral / Positive for tweets, batched on Ray Serve.",
    responses=LIMIT_RESPONSES,
)
api.add_middleware(BodyLimit)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, error: RequestValidationError) -> Response:
    """FastAPI's own 422 echoes each bad input back and cannot encode a lone surrogate, NaN or Infinity (all
    accepted by Python's JSON parser): such requests got a 500. The same 422, without the echo, in ASCII."""
    errors = [{k: v for k, v in e.items() if k != "input"} for e in error.errors()]
    return Response(json.dumps({"detail": jsonable_encoder(errors)}), status_code=422, media_type="application/json")


@serve.deployment(name="Sentiment")
@serve.ingress(api)
class SentimentDeployment:
    def __init__(self, model_dir: str, quantize: bool = False):
        # One intra-op thread per CPU this replica holds (however it was set: args, config file or default):
        # more would fight the other replicas and the proxy for cores.
        torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        device = "cuda" if ray.get_gpu_ids() else "cpu"  # Ray 2.60 shows every GPU to a replica: use one only if granted
        self.predictor = Predictor(model_dir, device=device, quantize=quantize and device == "cpu")
        self.recent_batch_sizes: deque[int] = deque(maxlen=64)  # shown at /model: proof that batching happens
        self.predictions = Counter("sam_predictions", description="Predictions served, by label.", tag_keys=("label",))
        self.batch_sizes = Histogram("sam_batch_size", description="Texts per forward pass.", boundaries=BATCH_SIZE_BUCKETS)

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
    async def predict(self, request: Annotated[PredictRequest, Body(openapi_examples=EXAMPLES)]) -> dict:
        """`{"text": ...}` gives one prediction; `{"texts": [...]}` gives `{"predictions": [...]}` in order."""
        if isinstance(request, SingleRequest):
            return await self.predict_one(request.text)
        return {"predictions": list(await asyncio.gather(*(self.predict_one(t) for t in request.texts)))}

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
            "config": self.predictor.config.to_dict(),
            "metrics": metrics,
            "device": str(self.predictor.device),
            "quantized": self.predictor.quantized,
            "batching": {**self.batching, "recent_batch_sizes": list(self.recent_batch_sizes)},
        }


class UnservableModelDir(ModelDirError, click.ClickException):
    """A `ModelDirError` that `serve run` (a click command) prints as one line and exit status 1."""

    def __init__(self, message: str):
        click.ClickException.__init__(self, message)


def build_app(args: ServeArgs) -> Application:
    """The application builder. A bad model directory fails here, once, in one line, instead of as a
    replica constructor that Serve retries forever."""
    try:
        check_model_dir(args.model_dir)
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
    ).bind(model_dir, args.quantize)  # each replica's node fetches a URI into its own cache
