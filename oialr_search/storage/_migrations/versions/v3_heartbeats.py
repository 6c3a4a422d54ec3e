"""v3: a heartbeat per trial, so a RUNNING trial whose job died is told from one that is alive.

A running trial refreshes ``oialr_trials.heartbeat`` every few seconds; a RUNNING trial whose heartbeat
is older than the grace period (or NULL: written by an older release, or released on preemption) is
dead, and the next job of the study resumes it. ``owner`` names the run that holds the trial (a token
per start or claim): a run whose trial was taken over can no longer write to it. Two nullable columns:
existing rows keep their values.
SQLite's downgrade drops the column with ``ALTER TABLE ... DROP COLUMN`` (SQLite >= 3.35).
"""

import sqlalchemy as sa
from alembic import op

revision = "v3"
down_revision = "v2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("oialr_trials", sa.Column("heartbeat", sa.DateTime(), nullable=True))
    op.add_column("oialr_trials", sa.Column("owner", sa.String(64), nullable=True))
    op.execute("UPDATE oialr_meta SET value = '3' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_column("oialr_trials", "owner")
    op.drop_column("oialr_trials", "heartbeat")
    op.execute("UPDATE oialr_meta SET value = '2' WHERE key = 'schema_version'")
