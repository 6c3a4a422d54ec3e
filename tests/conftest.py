import os
from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database for the tests: OIALR_SEARCH_TEST_POSTGRES_URL when set, else a throwaway
    server started from the machine's PostgreSQL binaries (tests/_postgres.py) for the session.

    No server: the test fails under CI=true (CI must not pass without the PostgreSQL tests), else skips
    saying why. Tests share the database: take a fresh schema with ``postgres_schema_url``.
    """
    url = os.environ.get("OIALR_SEARCH_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    from tests._postgres import PostgresServer, PostgresUnavailable

    server = None
    try:
        server = PostgresServer()
        server.start()
    except PostgresUnavailable as exc:
        if server is not None:
            server.stop()
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no PostgreSQL server could start for the tests: {exc}")
        pytest.skip(f"no PostgreSQL server for the tests: {exc}")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    """``postgres_url`` with a new, empty schema of its own (dropped after): an independent database per test."""
    from tests._postgres import fresh_schema

    with fresh_schema(postgres_url) as url:
        yield url
