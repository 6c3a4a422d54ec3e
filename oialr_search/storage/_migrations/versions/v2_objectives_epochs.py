"""v2: several objectives and constraints per study, per-epoch reports while a trial runs.

Only nullable columns and an index are added, so v1 rows stay as they are: a NULL ``objectives`` means
the study's single (metric, direction), a NULL ``objective_values`` the trial's single ``value``.
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


def upgrade() -> None:
    for table, columns in COLUMNS.items():
        for name, type_ in columns:
            op.add_column(table, sa.Column(name, type_, nullable=True))
    # epochs are now written one by one while the trial runs: at most one row per (trial, epoch)
    op.create_index("ix_oialr_epoch_trial_epoch", "oialr_trial_epochs", ["trial_id", "epoch"], unique=True)
    op.execute("UPDATE oialr_meta SET value = '2' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_index("ix_oialr_epoch_trial_epoch", table_name="oialr_trial_epochs")
    for table, columns in COLUMNS.items():
        for name, _ in columns:
            op.drop_column(table, name)  # native DROP COLUMN: PostgreSQL, SQLite >= 3.35
    op.execute("UPDATE oialr_meta SET value = '1' WHERE key = 'schema_version'")
