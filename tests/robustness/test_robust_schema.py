"""schemathesis against the server's OpenAPI schema: generated requests (valid, boundary and invalid bodies, every
method on every path) get answers or 4xx errors, never a server error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

from fusevlm.serve.server import create_app

schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def api_schema(model_dir):
    app = create_app(model_dir, max_tokens=8, max_images=2, max_body_bytes=200_000, body_timeout_s=5)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_schemathesis_finds_no_server_error(case):
    from schemathesis.checks import not_a_server_error

    case.call_and_validate(checks=[not_a_server_error])


def test_the_schema_describes_the_chat_request(api_schema):
    operation = api_schema.raw_schema["paths"]["/v1/chat/completions"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    assert "messages" in body["required"] and body["properties"]["messages"]["minItems"] == 1
    assert {"400", "404", "408", "413", "429"} <= set(operation["responses"])
