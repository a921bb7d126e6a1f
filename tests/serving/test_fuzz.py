"""The OpenAPI schema fuzzed with schemathesis against the in-process ASGI app: no input
it generates, schema-valid or not, may produce a 5xx; answers must match the schema and
invalid inputs must be refused (422, or 413 for a body over the size limit, or 404/405).
Bounded: `EXAMPLES` cases per operation and mode (about 10 s), seeded and derandomized so
that CI runs the same cases every time (change EXAMPLES to explore more)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from serving.app import create_app

EXAMPLES = 30
OPERATIONS = [
    ("GET", "/healthz"),
    ("GET", "/v1/info"),
    ("GET", "/v1/users/{user_id}/embedding"),
    ("POST", "/v1/score"),
    ("POST", "/v1/recommend"),
    ("GET", "/v1/users/{user_id}/similar"),
]
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
CONFIG = {
    "seed": 0,
    "checks": {"negative_data_rejection": {"expected-statuses": ["400", "404", "405", "413", "422"]}},
}


@pytest.fixture(scope="module")
def api_schema(holder):
    config = SchemathesisConfig.from_dict(CONFIG)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(holder), config=config)


def test_every_operation_is_fuzzed(api_schema) -> None:
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE)
    for m, p in OPERATIONS
    if p not in ("/healthz", "/v1/info")  # these take no input
]


@pytest.mark.parametrize("method, path, mode", CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_no_server_errors_and_conforming_answers(
    api_schema, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case) -> None:
        case.call_and_validate(checks=CHECKS)

    run()
