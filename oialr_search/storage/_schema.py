"""Database schema. Table names are prefixed ``oialr_`` so an Optuna RDB storage (tables
``studies``, ``trials``, …) can live in the same database without collisions."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

SCHEMA_VERSION = 7  # v1: the first release; v2: objectives, constraints, per-epoch reports; v3: heartbeats;
# v4: deaths of a trial's runs (crashes); v5: jobs started on a study; v6: the backend that proposed a trial;
# v7: a RUNNING trial's deadline (see _migrations)

# Trial states. INTERRUPTED: the job died while the trial was running (set on resume).
RUNNING, COMPLETE, FAILED, PRUNED, INTERRUPTED = "RUNNING", "COMPLETE", "FAILED", "PRUNED", "INTERRUPTED"
STATES = (RUNNING, COMPLETE, FAILED, PRUNED, INTERRUPTED)


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = "oialr_studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True, index=True)
    space: Mapped[dict] = mapped_column(JSON)  # the search space as loaded (file contents + base config)
    space_path: Mapped[str] = mapped_column(Text, default="")
    metric: Mapped[str] = mapped_column(String(64))  # the first objective (kept for v1 readers)
    direction: Mapped[str] = mapped_column(String(16))
    # [{"metric": ..., "direction": ...}, ...]; NULL in studies from v1: the single (metric, direction)
    objectives: Mapped[list | None] = mapped_column(JSON, nullable=True)
    constraints: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # {metric: {"min": x, "max": y}}
    backend: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int] = mapped_column(Integer, default=0)
    budget: Mapped[int] = mapped_column(Integer, default=0)
    created: Mapped[datetime] = mapped_column(DateTime)
    # search jobs started on the study (v5): each takes the next count, so jobs started at once seed apart
    jobs: Mapped[int] = mapped_column(Integer, server_default="0")
    trials: Mapped[list[TrialRow]] = relationship(back_populates="study", cascade="all, delete-orphan")


class TrialRow(Base):
    __tablename__ = "oialr_trials"
    __table_args__ = (UniqueConstraint("study_id", "number", name="uq_oialr_trial_number"),
                      Index("ix_oialr_trials_study_state", "study_id", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("oialr_studies.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), index=True)
    rank: Mapped[int] = mapped_column(Integer, default=0)
    island: Mapped[int | None] = mapped_column(Integer, nullable=True)
    device: Mapped[str] = mapped_column(String(32), default="cpu")
    params: Mapped[dict] = mapped_column(JSON)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)  # the first objective's value
    # one raw value per objective (in the study's order), also for PRUNED trials (their last epoch)
    objective_values: Mapped[list | None] = mapped_column(JSON, nullable=True)
    feasible: Mapped[bool | None] = mapped_column(Boolean, nullable=True)  # meets the study's constraints
    last_epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)  # epochs reported so far
    metrics: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # final metrics of the run
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started: Mapped[datetime] = mapped_column(DateTime)
    finished: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    duration: Mapped[float | None] = mapped_column(Float, nullable=True)
    # refreshed every few seconds while the trial runs (v3); with no deadline that counts (below), a RUNNING
    # trial with an old or NULL one is dead (see _writes' liveness rule)
    heartbeat: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    owner: Mapped[str | None] = mapped_column(String(64), nullable=True)  # the run holding it (v3)
    # its last heartbeat plus the grace period of the job holding it (v7): past it, the trial is dead, whatever
    # the looking job's own grace period. It counts only while the owner token is one of a job that keeps it
    # (see _writes.DEADLINE_OWNER); without one (released, held by an earlier release's job) the heartbeat
    # and the looking job's grace period decide
    deadline: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # runs of it that died while holding it (its heartbeat went stale, not released): bounded resumes (v4)
    crashes: Mapped[int] = mapped_column(Integer, server_default="0")
    # propulate, optuna or random (v6; NULL in trials of earlier releases): what ran, where the study's own
    # backend is what its first job asked for
    backend: Mapped[str | None] = mapped_column(String(16), nullable=True)
    study: Mapped[StudyRow] = relationship(back_populates="trials")
    epochs: Mapped[list[EpochRow]] = relationship(back_populates="trial", cascade="all, delete-orphan",
                                                  order_by="EpochRow.epoch")


class TrialPayloadRow(Base):
    """A trial's large JSON documents, apart from its row: a CIFAR-size rank trajectory is ~1 MB, and
    in the trial row it would be read (overflow pages and all) by every query that scans trials."""

    __tablename__ = "oialr_trial_payloads"

    trial_id: Mapped[int] = mapped_column(ForeignKey("oialr_trials.id", ondelete="CASCADE"), primary_key=True)
    config: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the resolved run config
    rank_trajectory: Mapped[list | None] = mapped_column(JSON, nullable=True)  # OIALR switch/update records


class EpochRow(Base):
    """One row per finished epoch, written as it happens (so a running or killed trial's curve is stored).

    The measurements are nullable (v2): SQLite stores a NaN as NULL, and a diverged trial's NaN loss
    must not make its epoch's insert fail (which left the trial RUNNING for good)."""

    __tablename__ = "oialr_trial_epochs"
    __table_args__ = (Index("ix_oialr_epoch_trial_epoch", "trial_id", "epoch", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("oialr_trials.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    top1: Mapped[float | None] = mapped_column(Float, nullable=True)
    top5: Mapped[float | None] = mapped_column(Float, nullable=True)
    lr: Mapped[float | None] = mapped_column(Float, nullable=True)
    trainable_fraction: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    compression: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)  # cumulative, like the final metric
    trial: Mapped[TrialRow] = relationship(back_populates="epochs")


class MetaRow(Base):
    __tablename__ = "oialr_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
