"""v5: how many search jobs were started on a study, so jobs started at the same moment (two sbatch
submissions of one script) take different seeds instead of proposing the same trials.

One NOT NULL integer column with a server default of 0: existing studies count no jobs (their jobs
are told apart by the trials they found, as before). SQLite's downgrade drops the column with
``ALTER TABLE ... DROP COLUMN`` (SQLite >= 3.35).
"""

import sqlalchemy as sa
from alembic import op

revision = "v5"
down_revision = "v4"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("oialr_studies", sa.Column("jobs", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE oialr_meta SET value = '5' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_column("oialr_studies", "jobs")
    op.execute("UPDATE oialr_meta SET value = '4' WHERE key = 'schema_version'")
