"""v6: the backend that proposed each trial (propulate, optuna or random), so that ``status``, ``studies``
and the report say what ran: the study's own backend is the one its first job asked for, and a job on one
rank runs the Optuna fallback, as does any job given another ``--backend``.

One nullable column: trials of earlier releases have none (their backend is not known).
"""

import sqlalchemy as sa
from alembic import op

revision = "v6"
down_revision = "v5"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("oialr_trials", sa.Column("backend", sa.String(16), nullable=True))
    op.execute("UPDATE oialr_meta SET value = '6' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_column("oialr_trials", "backend")
    op.execute("UPDATE oialr_meta SET value = '5' WHERE key = 'schema_version'")
