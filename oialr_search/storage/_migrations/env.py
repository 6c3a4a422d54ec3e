"""Alembic environment of the oialr-search schema.

Run only through :mod:`oialr_search.storage._migrate` (there is no alembic.ini): it passes its open
connection in ``config.attributes["connection"]``, so a migration runs inside the caller's transaction
and with the caller's engine (the Store's SQLite engine emits BEGIN itself; a second connection would
wait for the lock the first one holds).

A new schema version N: add ``versions/vN_<what>.py`` with ``revision = "vN"`` and ``down_revision =
"vN-1"`` (the revision id *is* the version number, see ``_migrate.schema_version``), written by hand
with frozen table definitions (never import _schema.py there), and set SCHEMA_VERSION = N in _schema.py.
"""

from alembic import context

from oialr_search.storage._migrate import VERSION_TABLE

context.configure(connection=context.config.attributes["connection"], version_table=VERSION_TABLE)
with context.begin_transaction():  # a no-op inside the caller's transaction, which commits or rolls back
    context.run_migrations()
