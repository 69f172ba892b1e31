"""The OpenAPI document is the server's contract (issue 19, item 8): schemathesis fuzzes the app
in-process (ASGI, no network) with and without a token and every answer must be one the document
lists, with a body that validates against the documented schema."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter

import pytest
import schemathesis  # the dev extra pins it: a missing install fails here, never skips
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.generation.hypothesis.examples import generate_one
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from genba.data.spec import CameraSpec
from genba.serve.server import PolicyServer, ServerConfig, build_app
from tests.serve.conftest import fake_backend, toy_spec

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection, ignored_auth]
# what a refusal of invalid input may be here: stricter than schemathesis' default (no 5xx, no 404/409/429)
CONFIG = {"checks": {"negative_data_rejection": {"expected-statuses": ["400", "401", "403", "413", "422"]}}}
# per operation and generation mode: ~300 cases per caller, ~15 s for both on a busy 2-core machine
EXAMPLES = int(os.environ.get("GENBA_SCHEMATHESIS_EXAMPLES", "30"))
OBS = {"embodiment": "toy", "state": [0.0, 0.0, 0.0, 0.5, 0.1], "instruction": "move"}


def fuzz(app, headers: dict | None, max_examples: int = EXAMPLES) -> tuple[Counter, Counter, list[str]]:
    """Run every documented operation: the document's own request examples, then positive and
    negative generation; return cases per operation, (operation, status) counts and one line per
    failing check (collected, not raised, so the report is complete)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG))
    runs = Counter(), Counter(), []
    for result in schema.get_all_operations():
        op = result.ok()
        for strategy in op.get_strategies_from_examples():
            _check(op, "example", generate_one(strategy), headers, *runs)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(op, mode, headers, max_examples, runs)
    return runs


def _fuzz_operation(op, mode, headers, max_examples, runs) -> None:
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case):
        _check(op, mode.value, case, headers, *runs)

    try:
        run()
    except Unsatisfiable:
        if mode is not GenerationMode.NEGATIVE:
            raise  # an operation without inputs has nothing to negate (GET /v1/health)


def _check(op, label, case, headers, cases, statuses, failures) -> None:
    if headers is None:  # the caller without a token sends none, whatever was generated
        case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
    cases[op.label] += 1
    try:
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        statuses[op.label, response.status_code] += 1
    except (Failure, FailureGroup) as e:
        for f in getattr(e, "exceptions", [e]):
            failures.append(f"{op.label} [{label}] {f.code} {f.title}: {' '.join(f.message.split())[:1500]}")


@pytest.fixture
def app(tokens):
    # a small body limit, so that the fuzzer's long lists and strings also meet the 413; an 8x8 camera
    # machine ('toycam', granted to acme) puts camera frames (obs.images) in the document and the fuzz
    specs = {"toy": toy_spec(), "other": toy_spec("other"),
             "toycam": dataclasses.replace(toy_spec("toycam"), cameras=(CameraSpec("corner2", 8, 8, "c"),),
                                           obs_mode="pixels")}
    tokens.add_org("acme", ["toy", "toycam"], can_reset_estop=True)
    server = PolicyServer(fake_backend(specs=specs), tokens, ServerConfig(max_body_bytes=1024, batch_window_s=0.0))
    return build_app(server), tokens.issue("acme", "fuzz")


def test_schemathesis_with_and_without_token(app):
    app, good = app
    cases, statuses, failures = fuzz(app, {"Authorization": f"Bearer {good}"})
    anon_cases, anon_statuses, anon_failures = fuzz(app, None)
    print(f"schemathesis: {sum(cases.values())} cases with a token {_by_status(statuses)}, "
          f"{sum(anon_cases.values())} without {_by_status(anon_statuses)}; "
          f"failures {len(failures)} + {len(anon_failures)}")
    assert not failures and not anon_failures, "\n".join(sorted(set(failures + anon_failures))[:20])
    # the run really exercised the server: every operation, accepted and refused calls
    assert len(cases) == 6 and all(n >= min(EXAMPLES, 10) for op, n in cases.items() if op.startswith("POST"))
    # the 200 bodies were checked against their models, the infer one too (the document's examples)
    assert {op for op, status in statuses if status == 200} == set(cases)
    assert statuses["POST /v1/infer", 403] > 0  # the example for 'other', which acme is not granted
    assert {op for op, status in anon_statuses if status == 401} == set(cases) - {"GET /v1/health"}
    assert anon_statuses["GET /v1/health", 200] > 0


def _by_status(statuses: Counter) -> dict[int, int]:
    out = Counter()
    for (_, status), n in statuses.items():
        out[status] += n
    return dict(sorted(out.items()))


def test_valid_observations_get_bodies_that_match_the_document(app):
    """Random valid observations (any state in range, horizon up to the chunk, many sessions,
    e-stops in between): every answer, 200 or not, must be documented and match its schema."""
    app, good = app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG))
    ops = {path: schema[path]["POST"] for path in ("/v1/infer", "/v1/estop", "/v1/estop/reset")}
    runs = Counter(), Counter(), []
    headers = {"Authorization": f"Bearer {good}"}

    @settings(max_examples=EXAMPLES * 2, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(state=st.lists(st.floats(-1, 1), min_size=5, max_size=5), horizon=st.none() | st.integers(1, 6),
           session=st.sampled_from(["a", "b", "c"]), then=st.sampled_from([None, "/v1/estop", "/v1/estop/reset"]))
    def run(state, horizon, session, then):
        body = {"obs": {**OBS, "state": state}, "session": session, **({"horizon": horizon} if horizon else {})}
        _check(ops["/v1/infer"], "valid", ops["/v1/infer"].Case(body=body), headers, *runs)
        if then:
            _check(ops[then], "valid", ops[then].Case(body={"session": session}), headers, *runs)

    run()
    cases, statuses, failures = runs
    print(f"schemathesis, valid observations: {sum(cases.values())} cases {_by_status(statuses)}, "
          f"failures {len(failures)}")
    assert not failures, "\n".join(sorted(set(failures))[:20])
    assert statuses["POST /v1/infer", 200] >= EXAMPLES and statuses["POST /v1/infer", 422] > 0  # horizon > 4


def test_the_fuzzer_catches_an_undocumented_status():
    """The harness itself can fail: an app answering a status its document does not list."""
    bad = FastAPI()

    @bad.get("/teapot")
    async def teapot():
        from fastapi.responses import JSONResponse
        return JSONResponse({"detail": "short and stout"}, status_code=418)

    cases, _, failures = fuzz(bad, None, max_examples=3)
    assert cases and failures and "418" in " ".join(failures)


def auth(tok):
    return {"Authorization": f"Bearer {tok}"}


def test_document_names_security_errors_and_bodies(app):
    app, _ = app
    doc = TestClient(app).get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values()), schemes
    error_ref = "#/components/schemas/ErrorBody"
    want = {"/v1/infer": {401, 403, 413, 422, 429, 503}, "/v1/reset": {401, 413, 422},
            "/v1/estop": {401, 413, 422, 429, 503}, "/v1/estop/reset": {401, 403, 413, 422},
            "/v1/metadata": {401}, "/v1/health": {413}}
    for path, codes in want.items():
        (op,) = doc["paths"][path].values()
        documented = {int(c) for c in op["responses"]}
        assert codes | {200} <= documented, (path, documented)
        for c in documented - {200}:
            assert op["responses"][str(c)]["content"]["application/json"]["schema"]["$ref"] == error_ref, (path, c)
        assert "$ref" in op["responses"]["200"]["content"]["application/json"]["schema"], path
        assert (path == "/v1/health") == ("security" not in op), path
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # the 422 body is ours, not a list


def test_horizon_above_the_chunk_is_refused_naming_it(app):
    app, good = app
    client = TestClient(app)
    r = client.post("/v1/infer", json={"obs": OBS, "horizon": 5}, headers=auth(good))
    assert r.status_code == 422 and "chunk" in r.json()["detail"] and "4" in r.json()["detail"], r.text
    r = client.post("/v1/infer", json={"obs": OBS, "horizon": 4}, headers=auth(good))
    assert r.status_code == 200 and len(r.json()["actions"]) == 4


def test_estop_reset_without_the_right_is_403_latched_or_not(app, tokens):
    app, good = app
    tokens.add_org("acme-ops", ["toy"])  # same grants, no right to reset
    ops = tokens.issue("acme-ops")
    client = TestClient(app)
    for session in ("never-used", "m"):
        r = client.post("/v1/estop/reset", json={"session": session}, headers=auth(ops))
        assert r.status_code == 403 and "reset" in r.json()["detail"], r.text
    assert client.post("/v1/infer", json={"obs": OBS, "session": "m"}, headers=auth(ops)).status_code == 200
    assert client.post("/v1/estop/reset", json={"session": "m"}, headers=auth(ops)).status_code == 403
    assert client.post("/v1/estop/reset", json={"session": "m"}, headers=auth(good)).status_code == 200
