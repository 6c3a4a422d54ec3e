"""v7: a deadline per RUNNING trial, written by the job that holds it: its last heartbeat plus that job's
grace period. A trial is dead once its deadline has passed, whatever grace period the job that looks at
it uses: before, a job with a shorter ``OIALR_SEARCH_HEARTBEAT`` took over the live trials of one with a
longer interval. (A job of an earlier release, still running after the upgrade, still judges every trial by
its own interval: its code is what it is.)

One nullable column. A trial without a deadline that counts (released by its job, or held by a job of an
earlier release, whose owner token lacks the ``dl:`` mark of jobs that keep one) is judged by its heartbeat
and the looking job's grace period, as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "v7"
down_revision = "v6"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("oialr_trials", sa.Column("deadline", sa.DateTime(), nullable=True))
    op.execute("UPDATE oialr_meta SET value = '7' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_column("oialr_trials", "deadline")
    op.execute("UPDATE oialr_meta SET value = '6' WHERE key = 'schema_version'")
