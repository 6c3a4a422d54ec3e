"""v2: several objectives and constraints per study, per-epoch reports while a trial runs, the
trials' large JSON documents (``config``, ``rank_trajectory``) in a table of their own, and nullable
epoch measurements.

The new columns are nullable, so v1 rows stay as they are: a NULL ``objectives`` means the study's
single (metric, direction), a NULL ``objective_values`` the trial's single ``value``. ``config`` and
``rank_trajectory`` move, row for row, to ``oialr_trial_payloads``: a CIFAR-size trajectory is ~1 MB,
and in the trial row every query that scans trials read it (overflow pages and all). The measurement
columns of ``oialr_trial_epochs`` (``step``, the losses, accuracies, ...) become nullable: SQLite stores
a NaN as NULL, and a diverged trial's NaN loss made its epoch insert fail (the trial stayed RUNNING).
The downgrade cannot put such a row back into v1's NOT NULL columns: it refuses while any exists
(:func:`_require_no_null_measurements`), before changing anything; delete or fill those rows first.

SQLite drops columns, or changes their NOT NULL, by recreating the table (``batch_alter_table``: create
a copy, DROP the old one, rename), which keeps every row, column, constraint, index and foreign key of
``oialr_trials`` and ``oialr_trial_epochs`` (reflected). That must run with ``PRAGMA foreign_keys=OFF``:
with it ON, the DROP's implicit DELETE fires ON DELETE CASCADE and empties the tables referencing
``oialr_trials`` (``defer_foreign_keys`` does not stop a cascade), and the pragma cannot change inside a
transaction. ``_migrate.prepare_schema`` turns it off
around its transaction; :func:`_require_foreign_keys_off` refuses to run otherwise. PostgreSQL gets
plain ``ALTER TABLE ... DROP COLUMN`` and ``ALTER COLUMN ... DROP NOT NULL``.
"""

import sqlalchemy as sa
from alembic import op

revision = "v2"
down_revision = "v1"
branch_labels = None
depends_on = None

COLUMNS = {  # table: (column, type), all nullable
    "oialr_studies": (("objectives", sa.JSON), ("constraints", sa.JSON)),
    "oialr_trials": (("objective_values", sa.JSON), ("feasible", sa.Boolean), ("last_epoch", sa.Integer)),
    "oialr_trial_epochs": (("compression", sa.Float), ("train_seconds", sa.Float)),
}
PAYLOAD_COLUMNS = ("config", "rank_trajectory")  # JSON, nullable: from oialr_trials to oialr_trial_payloads
# oialr_trial_epochs' measurements: NOT NULL in v1, nullable from v2 (a NaN is stored as NULL)
MEASUREMENTS = (("step", sa.Integer), *((name, sa.Float) for name in (
    "train_loss", "val_loss", "top1", "top5", "lr", "trainable_fraction", "seconds")))


def _require_foreign_keys_off() -> None:
    """Refuse to recreate a SQLite table while foreign keys are enforced: that would delete rows."""
    if op.get_context().as_sql or op.get_bind().dialect.name != "sqlite":
        return
    if op.get_bind().exec_driver_sql("PRAGMA foreign_keys").scalar():
        raise RuntimeError("the v2 migration recreates SQLite tables: run it with PRAGMA foreign_keys=OFF (set "
                           "outside the transaction, as oialr_search.storage._migrate does), else ON DELETE "
                           "CASCADE would delete the rows that reference them")


def _require_no_null_measurements() -> None:
    """Refuse to downgrade while an epoch row has a NULL measurement: v1's columns are NOT NULL."""
    if op.get_context().as_sql:
        return
    where = " OR ".join(f"{name} IS NULL" for name, _ in MEASUREMENTS)
    count = op.get_bind().execute(sa.text(f"SELECT count(*) FROM oialr_trial_epochs WHERE {where}")).scalar()
    if count:
        raise RuntimeError(f"cannot downgrade to schema v1: {count} row(s) of oialr_trial_epochs have a NULL "
                           "measurement (e.g. a NaN loss), which v1's NOT NULL columns cannot hold; delete or "
                           "fill them first")


def upgrade() -> None:
    _require_foreign_keys_off()
    for table, columns in COLUMNS.items():
        for name, type_ in columns:
            op.add_column(table, sa.Column(name, type_, nullable=True))
    op.create_table(
        "oialr_trial_payloads",
        sa.Column("trial_id", sa.Integer, sa.ForeignKey("oialr_trials.id", ondelete="CASCADE"), primary_key=True),
        *(sa.Column(name, sa.JSON, nullable=True) for name in PAYLOAD_COLUMNS),
    )
    columns = ", ".join(PAYLOAD_COLUMNS)
    op.execute(f"INSERT INTO oialr_trial_payloads (trial_id, {columns}) SELECT id, {columns} FROM oialr_trials")
    with op.batch_alter_table("oialr_trials") as batch:  # SQLite: recreate; else ALTER TABLE DROP COLUMN
        for name in PAYLOAD_COLUMNS:
            batch.drop_column(name)
    with op.batch_alter_table("oialr_trial_epochs") as batch:  # SQLite: recreate; else ALTER COLUMN
        for name, type_ in MEASUREMENTS:
            batch.alter_column(name, existing_type=type_, nullable=True)
    # the status/best/pareto queries filter on (study, state)
    op.create_index("ix_oialr_trials_study_state", "oialr_trials", ["study_id", "state"])
    # epochs are now written one by one while the trial runs: at most one row per (trial, epoch)
    op.create_index("ix_oialr_epoch_trial_epoch", "oialr_trial_epochs", ["trial_id", "epoch"], unique=True)
    op.execute("UPDATE oialr_meta SET value = '2' WHERE key = 'schema_version'")


def downgrade() -> None:
    _require_foreign_keys_off()
    _require_no_null_measurements()
    op.drop_index("ix_oialr_epoch_trial_epoch", table_name="oialr_trial_epochs")
    op.drop_index("ix_oialr_trials_study_state", table_name="oialr_trials")
    for name in PAYLOAD_COLUMNS:
        op.add_column("oialr_trials", sa.Column(name, sa.JSON, nullable=True))
    op.execute("UPDATE oialr_trials SET " + ", ".join(
        f"{name} = (SELECT p.{name} FROM oialr_trial_payloads p WHERE p.trial_id = oialr_trials.id)"
        for name in PAYLOAD_COLUMNS))
    op.drop_table("oialr_trial_payloads")
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table) as batch:  # SQLite: recreate (any version); else ALTER TABLE DROP COLUMN
            for name, _ in columns:
                batch.drop_column(name)
            if table == "oialr_trial_epochs":
                for name, type_ in MEASUREMENTS:
                    batch.alter_column(name, existing_type=type_, nullable=False)
    op.execute("UPDATE oialr_meta SET value = '1' WHERE key = 'schema_version'")
