import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:  # noqa: ANN001
    """A fresh, empty database for a store test, on SQLite and on PostgreSQL (skipped without a server,
    except under CI=true: see the postgres_url fixture)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db.sqlite"
    return request.getfixturevalue("postgres_schema_url")
