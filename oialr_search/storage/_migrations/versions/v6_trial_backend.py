"""v6: the backend that proposed each trial (propulate, optuna or random), so that ``status``, ``studies``
and the report say what ran: the study's own backend is the one its first job asked for, and a job on one
rank runs the Optuna fallback, as does any job given another ``--backend``.

One nullable column: trials of earlier releases have none (their backend is not known).

Also ``last_epoch`` (v2: the epochs a trial reported) of the trials stored before v2, which v2 left NULL:
it is their last stored epoch, so ``trials`` shows how far they got and where a PRUNED one stopped.
"""

import sqlalchemy as sa
from alembic import op

revision = "v6"
down_revision = "v5"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("oialr_trials", sa.Column("backend", sa.String(16), nullable=True))
    op.execute("UPDATE oialr_trials SET last_epoch = (SELECT max(e.epoch) FROM oialr_trial_epochs e "
               "WHERE e.trial_id = oialr_trials.id) WHERE last_epoch IS NULL")
    op.execute("UPDATE oialr_meta SET value = '6' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.drop_column("oialr_trials", "backend")
    op.execute("UPDATE oialr_meta SET value = '5' WHERE key = 'schema_version'")
