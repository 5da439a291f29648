"""The HTTP contract of `POST /predict`, `/healthz` and `/model`: request and response models, the limits on a
request, and the FastAPI app (with its refusals) that `sam.serve`'s deployment serves. Imports no Ray."""

import json
import re
from typing import Annotated, Any, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, StrictStr, Tag, create_model

from sam import LABELS
from sam.encoding import MAX_TEXT_CHARS

MAX_TEXTS = 256  # per request: a bigger list is a bulk job, not a request
MAX_BODY_BYTES = 1 << 20  # 256 texts of ordinary tweets fit with room to spare
MAX_HEADER_BYTES = 16 << 10  # as h11 and Node: the proxy (uvicorn with httptools) has no limit of its own


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
    model: str = Field(description="the model that answered (also the `X-SAM-Model` header): its location, or "
                                   "`models:/NAME/VERSION`")


class BatchPrediction(BaseModel):
    predictions: list[Prediction] = Field(description="one per text, in the request's order")


class Health(BaseModel):
    status: Literal["ok"]


class Batching(BaseModel):
    max_batch_size: int
    batch_wait_timeout_s: float
    recent_batch_sizes: list[int] = Field(description="texts per forward pass, the last 64 passes")


class PredictionLogState(BaseModel):
    log_dir: str
    share: float
    written: int = Field(description="rows written by this replica")
    dropped: int = Field(description="rows dropped by this replica: its buffer full, or storage failing")


class ModelTraffic(BaseModel):
    requests: int
    errors: int
    latency_ms: list[int] = Field(description="requests per latency bin (sam.traffic.LATENCY_BOUNDS_MS, then the rest)")


class ShadowTraffic(BaseModel):
    compared: int = Field(description="texts both models scored")
    agreed: int
    failed: int = Field(description="shadow requests the challenger failed")
    skipped: int = Field(description="shadow requests not sent: too many still waiting on the challenger")


class Traffic(BaseModel):
    """This replica's counters since it started; a reader diffs two readings of each replica."""

    replica: str
    models: dict[str, ModelTraffic]
    shadow: ShadowTraffic


class ServedModel(BaseModel):
    model: str = Field(description="the name its answers carry")
    model_dir: str
    labels: list[Literal[LABELS]]
    shape: dict[str, Any] = Field(description="the model's real shape, from its config.json")
    config: dict[str, Any] = Field(description="SAM's training settings (sam_config.json); empty for another model")
    metrics: dict[str, Any]
    device: str
    runtime: str = Field(description="torch, onnx (ONNX Runtime fp32) or onnx-int8")
    quantized: bool = Field(description="the runtime is onnx-int8")
    batching: Batching
    log: Optional[PredictionLogState] = Field(None, description="the prediction log, where one is kept")


class Challenger(ServedModel):
    share: float = Field(description="split: the share of request keys it answers")
    mode: Literal["split", "shadow"]


class ModelInfo(ServedModel):
    """The champion, and the challenger beside it where one is deployed."""

    challenger: Optional[Challenger] = None
    traffic: Traffic


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
OPENAPI_EXAMPLES = {
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
