"""v1, the first release's tables.

The baseline: databases made by v1 are stamped with it, not re-created. Upgrading an empty database
from here to head gives exactly what ``Base.metadata.create_all`` makes (tests/storage/test_migrations.py).
"""

import sqlalchemy as sa
from alembic import op

revision = "v1"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oialr_studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("space", sa.JSON, nullable=False),
        sa.Column("space_path", sa.Text, nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("budget", sa.Integer, nullable=False),
        sa.Column("created", sa.DateTime, nullable=False),
    )
    op.create_index("ix_oialr_studies_name", "oialr_studies", ["name"], unique=True)
    op.create_table(
        "oialr_trials",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("oialr_studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("island", sa.Integer, nullable=True),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("metrics", sa.JSON, nullable=True),
        sa.Column("config", sa.JSON, nullable=True),
        sa.Column("rank_trajectory", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("started", sa.DateTime, nullable=False),
        sa.Column("finished", sa.DateTime, nullable=True),
        sa.Column("duration", sa.Float, nullable=True),
        sa.UniqueConstraint("study_id", "number", name="uq_oialr_trial_number"),
    )
    op.create_index("ix_oialr_trials_study_id", "oialr_trials", ["study_id"])
    op.create_index("ix_oialr_trials_state", "oialr_trials", ["state"])
    op.create_table(
        "oialr_trial_epochs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("trial_id", sa.Integer, sa.ForeignKey("oialr_trials.id", ondelete="CASCADE"), nullable=False),
        *(sa.Column(name, sa.Integer, nullable=False) for name in ("epoch", "step")),
        *(sa.Column(name, sa.Float, nullable=False)
          for name in ("train_loss", "val_loss", "top1", "top5", "lr", "trainable_fraction", "seconds")),
    )
    op.create_index("ix_oialr_trial_epochs_trial_id", "oialr_trial_epochs", ["trial_id"])
    meta = op.create_table(
        "oialr_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.bulk_insert(meta, [{"key": "schema_version", "value": "1"}])


def downgrade() -> None:
    for table in ("oialr_meta", "oialr_trial_epochs", "oialr_trials", "oialr_studies"):
        op.drop_table(table)
