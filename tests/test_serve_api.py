"""The API contract: the served /openapi.json is valid OpenAPI 3.1 and says exactly what /predict accepts and
returns. Bodies generated from that schema are answered 200; any other body gets a documented 4xx; every
answer validates against the schema documented for its status code."""

import http.client
import json
import sys
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from requests.structures import CaseInsensitiveDict

from sam import LABELS
from sam.encoding import MAX_TEXT_CHARS
from sam.api import MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_TEXTS, NOT_BLANK
from sam.serve import ServeArgs, build_app
from tests.helpers import free_port

TIMEOUT = 60
PROPERTY_SETTINGS = settings(
    max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.fixture(scope="module")
def url(ray_session, tiny_model_dir):
    from ray import serve

    port = free_port()  # not 8000: other Serve instances may share this machine
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(ServeArgs(model_dir=str(tiny_model_dir), max_batch_size=8)), name="sam_api")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


class Contract:
    """A client that knows the API only from its /openapi.json: it checks bodies and reads answers by the schema."""

    def __init__(self, document: dict):
        self.document = document
        self.predict_body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        self.request_schema = self.with_components(self.predict_body["schema"])
        self.request_validator = Draft202012Validator(self.request_schema)

    def validator(self, schema: dict) -> Draft202012Validator:
        return Draft202012Validator(self.with_components(schema))

    def with_components(self, schema: dict) -> dict:
        """`schema` made self-contained: its `#/components/...` references resolve inside it."""
        return {**schema, "components": self.document["components"]}

    def read(self, response: requests.Response, path: str = "/predict", method: str = "post"):
        """The answer's body, once its status and media type are documented for the route and it fits their schema."""
        responses = self.document["paths"][path][method]["responses"]
        assert str(response.status_code) in responses, (response.status_code, response.text[:300])
        media_type = response.headers["content-type"].split(";")[0]
        content = responses[str(response.status_code)]["content"]
        assert media_type in content, (response.status_code, media_type, list(content))
        body = response.json() if media_type == "application/json" else response.text
        errors = list(self.validator(content[media_type]["schema"]).iter_errors(body))
        assert not errors, (response.status_code, body, [e.message for e in errors])
        return body


@pytest.fixture(scope="module")
def contract(url):
    return Contract(requests.get(f"{url}/openapi.json", timeout=TIMEOUT).json())


def post(url, body):
    data = json.dumps(body).encode()
    return requests.post(f"{url}/predict", data=data, headers={"Content-Type": "application/json"}, timeout=TIMEOUT), len(data)


def test_openapi_document_is_valid_openapi_3_1(contract):
    assert contract.document["openapi"].startswith("3.1.")
    validate(contract.document)


def test_blank_pattern_is_what_str_strip_removes():
    """The schema's `pattern` and the app's blank rule are one regex: it must match exactly the texts `str.strip`
    leaves something of (the rule before it was in the schema), checked code point by code point."""
    assert [c for c in map(chr, range(sys.maxunicode + 1)) if bool(NOT_BLANK.search(c)) == c.isspace()] == []


def test_the_issues_request_is_schema_invalid_and_refused(url, contract):
    body = {"text": "0", "texts": ["0"]}
    assert not contract.request_validator.is_valid(body)
    response, _ = post(url, body)
    assert response.status_code == 422
    assert "exactly one" in contract.read(response)["detail"][0]["msg"]


def test_docs_examples_are_valid_and_answered(url, contract):
    examples = {name: example["value"] for name, example in contract.predict_body["examples"].items()}
    assert sorted(key for value in examples.values() for key in value) == ["text", "texts"]  # both forms
    for body in examples.values():
        assert contract.request_validator.is_valid(body)
        response, _ = post(url, body)
        assert response.status_code == 200
        contract.read(response)
    assert requests.get(f"{url}/docs", timeout=TIMEOUT).status_code == 200


def test_answers_read_by_their_schema(url, contract):
    single = contract.read(post(url, {"text": "love it"})[0])
    assert contract.validator({"$ref": "#/components/schemas/Prediction"}).is_valid(single)
    assert single["sentiment"] == LABELS[single["label"]]
    batch = contract.read(post(url, {"texts": ["love it", "hate it", "the bus"]})[0])
    assert contract.validator({"$ref": "#/components/schemas/BatchPrediction"}).is_valid(batch)
    assert len(batch["predictions"]) == 3
    assert contract.read(requests.get(f"{url}/healthz", timeout=TIMEOUT), "/healthz", "get") == {"status": "ok"}
    info = contract.read(requests.get(f"{url}/model", timeout=TIMEOUT), "/model", "get")
    assert info["labels"] == list(LABELS)


def raw_post(url: str, headers: dict) -> requests.Response:
    """A POST with these headers (and Host) but no body: requests would correct a bad Content-Length."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=TIMEOUT)
    try:
        connection.putrequest("POST", "/predict")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        answer = connection.getresponse()
        response = requests.Response()
        response.status_code, response._content = answer.status, answer.read()
        response.headers = CaseInsensitiveDict(answer.getheaders())
        return response
    finally:
        connection.close()


JSON_TYPE = {"Content-Type": "application/json"}
JUNK_HEADER = {"X-Junk": "a" * MAX_HEADER_BYTES}
REFUSALS = {  # name: (route, method, status, how to get it)
    # Refused by the HTTP server before the app, in plain text: documented as such.
    "bad Content-Length": ("/predict", "post", 400, lambda url: raw_post(url, {**JSON_TYPE, "Content-Length": "12abc"})),
    "not UTF-8": ("/predict", "post", 400, lambda url: requests.post(f"{url}/predict", data=b'{"text": "\xff"}', headers=JSON_TYPE, timeout=TIMEOUT)),
    "body too large": ("/predict", "post", 413, lambda url: post(url, {"text": "x" * MAX_BODY_BYTES})[0]),
    "blank text": ("/predict", "post", 422, lambda url: post(url, {"texts": ["ok", "  "]})[0]),
    "headers too large": ("/predict", "post", 431, lambda url: requests.post(f"{url}/predict", json={"text": "hi"}, headers=JUNK_HEADER, timeout=TIMEOUT)),
    "GET body too large": ("/healthz", "get", 413, lambda url: requests.get(f"{url}/healthz", data=b"x" * (MAX_BODY_BYTES + 1), timeout=TIMEOUT)),
    "GET headers too large": ("/model", "get", 431, lambda url: requests.get(f"{url}/model", headers=JUNK_HEADER, timeout=TIMEOUT)),
}


@pytest.mark.parametrize("path, method, status, send", list(REFUSALS.values()), ids=list(REFUSALS))
def test_refusals_are_documented_with_their_body(url, contract, path, method, status, send):
    response = send(url)
    assert response.status_code == status, response.text[:300]
    assert contract.read(response, path, method), "a refusal says why"


@PROPERTY_SETTINGS
@given(data=st.data())
def test_schema_valid_bodies_are_answered(url, contract, data):
    """Every body the schema allows is answered 200 (413 if over the documented size limit), one prediction a text."""
    body = data.draw(from_schema(contract.request_schema))
    response, size = post(url, body)
    assert response.status_code == (200 if size <= MAX_BODY_BYTES else 413), response.text[:300]
    answer = contract.read(response)
    assert len(answer.get("predictions", [answer])) == len(body.get("texts", [None]))


WHITESPACE = st.sampled_from([c for c in map(chr, range(0x3001)) if c.isspace()])
TEXTS = st.one_of(
    st.text(max_size=20),  # no lone surrogates: those are not text (the reliability tests send them)
    st.text(WHITESPACE, max_size=4),
    st.sampled_from(["x" * MAX_TEXT_CHARS, "x" * (MAX_TEXT_CHARS + 1)]),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXTS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
VALUES = TEXTS | JSON | st.lists(TEXTS, max_size=4) | st.sampled_from([["a"] * MAX_TEXTS, ["a"] * (MAX_TEXTS + 1)])
NEAR_MISSES = st.dictionaries(st.sampled_from(["text", "texts", "extra"]), VALUES, max_size=3)


@PROPERTY_SETTINGS
@given(data=st.data())
def test_any_body_is_answered_as_the_schema_says(url, contract, data):
    """200 exactly when the schema allows the body (none here is over the size limit), else a documented 422."""
    body = data.draw(from_schema(contract.request_schema) | NEAR_MISSES | JSON)
    response, size = post(url, body)
    assert size <= MAX_BODY_BYTES
    schema_valid = contract.request_validator.is_valid(body)
    assert response.status_code == (200 if schema_valid else 422), (body, response.text[:300])
    contract.read(response)
