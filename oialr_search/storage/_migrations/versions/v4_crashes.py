"""v4: how often a trial's run died while it held the trial, so a trial that kills its process (out of
memory, a segfault, a node failure) is resumed a bounded number of times instead of by every job forever.

One NOT NULL integer column with a server default of 0: existing rows count no deaths.
SQLite's downgrade drops the column with ``ALTER TABLE ... DROP COLUMN`` (SQLite >= 3.35).
"""

import sqlalchemy as sa
from alembic import op

revision = "v4"
down_revision = "v3"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("oialr_trials", sa.Column("crashes", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE oialr_meta SET value = '4' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_column("oialr_trials", "crashes")
    op.execute("UPDATE oialr_meta SET value = '3' WHERE key = 'schema_version'")
