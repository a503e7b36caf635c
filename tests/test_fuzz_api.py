"""Property-based fuzzing of every operation in our own OpenAPI, in-process, on SQLite and PostgreSQL.

Whatever schemathesis sends (valid or not), the answer must never be a 5xx: a server error is a bug.
The number of examples per operation is bounded so the whole run stays around a minute.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.python import asgi

from certctl.api.app import create_app
from tests.conftest import ADMIN_KEY, BACKENDS, _pg_admin, _pg_url, make_settings

EXAMPLES_PER_OPERATION = 12


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz_schema(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    name = f"certctl_fz_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        url = f"sqlite:///{data_dir / 'fuzz.db'}"
    else:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
        url = _pg_url(name)
    # The app's lifespan (migrations, seeds) runs in schemathesis' own event-loop thread.
    app = create_app(make_settings(url, data_dir / "data"))
    try:
        yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", app)
    finally:
        asgi.shutdown_lifespans()
        if request.param == "postgresql":
            asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _fuzz_operation(operation: Any) -> str | None:
    """Run one operation's examples; return a failure report (with a curl reproduction) or None."""
    found: list[str] = []

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,  # the same cases every run: a failure here is reproducible, not flaky
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        response = case.call(headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        # A 5xx the operation documents (the digest's 503 while it is off) is the contract's answer, not a bug.
        if response.status_code >= 500 and str(response.status_code) not in operation.definition.raw["responses"]:
            found[:] = [
                f"{case.method} {case.formatted_path} → {response.status_code}: {response.text[:300]}\n"
                f"    reproduce: {case.as_curl_command(headers={'Authorization': 'Bearer <admin key>'})}"
            ]
            raise AssertionError(found[0])

    try:
        run()
    except AssertionError:
        return found[0] if found else "failed without a report"
    return None


def test_no_server_errors(fuzz_schema: Any) -> None:
    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) > 20 and any(op.path == "/api/v1/teams" for op in operations)
    failures = [report for op in operations if (report := _fuzz_operation(op))]
    assert not failures, f"{len(failures)} operation(s) answered 5xx:\n" + "\n".join(failures)
