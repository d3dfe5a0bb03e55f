"""Declarative models of the ledger tables.

These classes are the single declaration of the schema: Alembic revisions are
written to match them and ``alembic check`` proves they do.  The v3 columns and
index names are kept exactly as the hand-rolled ledger created them, so an old
database can be adopted in place.  Code outside ``docstokg.ledger`` never sees
these classes: repositories hand out immutable records instead.
"""

from __future__ import annotations

from sqlalchemy import (
    REAL,
    BigInteger,
    CheckConstraint,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TextClause,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from docstokg.states import JobState

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Epoch seconds.  SQLite stores them as REAL, as v3 did; on PostgreSQL that name
# would mean a 4-byte float (about 2 minutes of precision today), so it is a double.
EpochSeconds: TypeEngine[float] = Double().with_variant(REAL(), "sqlite")

JOB_STATES_SQL = ", ".join(f"'{state.value}'" for state in JobState)

OP_IN_PROGRESS = "IN_PROGRESS"
OP_SUCCEEDED = "SUCCEEDED"
OP_FAILED = "FAILED"
OP_ABANDONED = "ABANDONED"
OP_STATUSES = (OP_IN_PROGRESS, OP_SUCCEEDED, OP_FAILED, OP_ABANDONED)

# The predicates of the partial indexes, each one object that both its index
# and the queries it serves use (the statements import them from here).  They
# are spelled with literals because a partial index only serves a query whose
# WHERE visibly implies the index's: SQLite compares the expressions, and a
# bound parameter in place of 'FAILED' implies nothing.
# The jobs a claim may take (ix_artifact_jobs_claim).
NOT_FINISHED_JOBS: TextClause = text(
    "state NOT IN ('DEDUPED', 'SKIPPED_DUPLICATE') "
    "AND NOT (state = 'FAILED' AND attempts >= max_attempts)"
)
IN_PROGRESS_OPS: TextClause = text("status = 'IN_PROGRESS'")
# The one job that stored a content: at most one DEDUPED job per sha256, so two
# workers finishing identical bytes at once cannot both claim to own them.
STORED_CONTENT: TextClause = text("state = 'DEDUPED'")
# Operators' questions: which jobs failed, which steps were retried, which ops
# were given up on, which have a duration.
FAILED_JOBS: TextClause = text("state = 'FAILED'")
RETRIED_OPS: TextClause = text("attempt > 1")
UNHEALTHY_OPS: TextClause = text("status IN ('FAILED', 'ABANDONED')")
TIMED_OPS: TextClause = text("duration_s IS NOT NULL")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Meta(Base):
    """Key/value facts about the ledger itself, notably ``schema_version``."""

    __tablename__ = "_meta"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class ArtifactJob(Base):
    """One artifact to fetch: identity, state and lease."""

    __tablename__ = "artifact_jobs"
    __table_args__ = (
        UniqueConstraint("work_id", "artifact_id", "canonical_url"),
        UniqueConstraint("idempotency_key"),
        CheckConstraint(f"state IN ({JOB_STATES_SQL})", name="state"),
        Index("idx_artifact_jobs_lease", "lease_until"),
        Index(
            "ix_artifact_jobs_claim",
            "created_at",
            "job_id",
            sqlite_where=NOT_FINISHED_JOBS,
            postgresql_where=NOT_FINISHED_JOBS,
        ),
        Index("ix_artifact_jobs_sha256", "sha256"),
        # job status --window-s: jobs created since, by state (covering).
        Index("ix_artifact_jobs_created_state", "created_at", "state"),
        # Jobs in a state (counts, failures), and those that reached it since a
        # time (finished per minute).  It replaces v3's idx_artifact_jobs_state.
        Index("ix_artifact_jobs_state_updated", "state", "updated_at"),
        # job status / stats: FAILED jobs by error and budget, without a row lookup each.
        Index(
            "ix_artifact_jobs_failed",
            "last_error",
            "attempts",
            "max_attempts",
            "created_at",
            sqlite_where=FAILED_JOBS,
            postgresql_where=FAILED_JOBS,
        ),
        Index(
            "uq_artifact_jobs_stored_content",
            "sha256",
            unique=True,
            sqlite_where=STORED_CONTENT,
            postgresql_where=STORED_CONTENT,
        ),
    )

    job_id: Mapped[str] = mapped_column(Text, primary_key=True)
    work_id: Mapped[str] = mapped_column(Text, nullable=False)
    artifact_id: Mapped[str] = mapped_column(Text, nullable=False)
    canonical_url: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(
        Text, nullable=False, default=JobState.PLANNED.value, server_default=JobState.PLANNED.value
    )
    lease_owner: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[float | None] = mapped_column(EpochSeconds)
    created_at: Mapped[float] = mapped_column(EpochSeconds, nullable=False)
    updated_at: Mapped[float] = mapped_column(EpochSeconds, nullable=False)
    idempotency_key: Mapped[str] = mapped_column(Text, nullable=False)
    # Fencing token: grows on every grant; every write a holder makes names it.
    lease_epoch: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="5")
    next_attempt_at: Mapped[float | None] = mapped_column(EpochSeconds)
    last_error: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(Text)
    final_path: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    content_type: Mapped[str | None] = mapped_column(Text)
    # The SHA-256 the manifest vouched for; a download of other bytes fails for good.
    expected_sha256: Mapped[str | None] = mapped_column(Text)


class ArtifactOp(Base):
    """One effect of one job, keyed by its op_key, with its recorded result."""

    __tablename__ = "artifact_ops"
    __table_args__ = (
        Index("idx_artifact_ops_job", "job_id"),
        Index(
            "ix_artifact_ops_in_progress",
            "started_at",
            sqlite_where=IN_PROGRESS_OPS,
            postgresql_where=IN_PROGRESS_OPS,
        ),
        # job stats: duration percentiles by kind, read off the index in order.
        Index(
            "ix_artifact_ops_kind_duration",
            "op_type",
            "duration_s",
            sqlite_where=TIMED_OPS,
            postgresql_where=TIMED_OPS,
        ),
        # job stats: steps that ran more than once (retries and takeovers).
        Index(
            "ix_artifact_ops_retried",
            "op_type",
            "job_id",
            "attempt",
            sqlite_where=RETRIED_OPS,
            postgresql_where=RETRIED_OPS,
        ),
        # job stats / metrics: ops given up on, and failed runs by kind.
        Index(
            "ix_artifact_ops_unhealthy",
            "op_type",
            "status",
            sqlite_where=UNHEALTHY_OPS,
            postgresql_where=UNHEALTHY_OPS,
        ),
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{status}'" for status in OP_STATUSES)),
            name="status",
        ),
    )

    op_key: Mapped[str] = mapped_column(Text, primary_key=True)
    job_id: Mapped[str] = mapped_column(
        Text, ForeignKey("artifact_jobs.job_id", ondelete="CASCADE"), nullable=False
    )
    op_type: Mapped[str] = mapped_column(Text, nullable=False)
    started_at: Mapped[float] = mapped_column(EpochSeconds, nullable=False)
    finished_at: Mapped[float | None] = mapped_column(EpochSeconds)
    result_code: Mapped[str | None] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default=OP_IN_PROGRESS)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    lease_epoch: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    # finished_at - started_at of the last run, set when it finishes (indexed for stats).
    duration_s: Mapped[float | None] = mapped_column(EpochSeconds)


class ManifestJob(Base):
    """A job's membership in a manifest: a run of that manifest claims only its members.

    One job may belong to several manifests (two manifests naming the same
    artifact share its job, fetched once); a manifest is known by its name.
    """

    __tablename__ = "manifest_jobs"
    __table_args__ = (Index("ix_manifest_jobs_job_id", "job_id"),)

    manifest: Mapped[str] = mapped_column(Text, primary_key=True)
    job_id: Mapped[str] = mapped_column(
        Text, ForeignKey("artifact_jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    added_at: Mapped[float] = mapped_column(EpochSeconds, nullable=False)


def _table_of(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


# The Core tables, for repositories that run statements without ORM bookkeeping.
jobs_table = _table_of(ArtifactJob)
ops_table = _table_of(ArtifactOp)
meta_table = _table_of(Meta)
manifest_jobs_table = _table_of(ManifestJob)


class HostLimit(Base):
    """One host's politeness, shared by the fleet: its cooldown and its rate cap's next turn.

    Only the host-politeness store writes it (see
    :mod:`docstokg.ledger.host_limits`); the ledger's jobs never depend on it.
    """

    __tablename__ = "host_limits"

    host: Mapped[str] = mapped_column(Text, primary_key=True)
    cooldown_until: Mapped[float] = mapped_column(EpochSeconds, nullable=False)
    next_request_at: Mapped[float] = mapped_column(EpochSeconds, nullable=False)


class HostSlot(Base):
    """A request in flight to a capped host: its holder renews ``lease_until`` while it lasts."""

    __tablename__ = "host_slots"

    host: Mapped[str] = mapped_column(Text, primary_key=True)
    holder: Mapped[str] = mapped_column(Text, primary_key=True)
    lease_until: Mapped[float] = mapped_column(EpochSeconds, nullable=False)


host_limits_table = _table_of(HostLimit)
host_slots_table = _table_of(HostSlot)
