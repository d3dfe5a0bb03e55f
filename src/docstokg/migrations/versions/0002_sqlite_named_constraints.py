"""SQLite: rebuild the v3 tables so every constraint carries its convention name.

The hand-rolled v3 DDL left its UNIQUE constraints unnamed and declared
``TEXT PRIMARY KEY`` columns, which SQLite lets hold NULL.  A file adopted from
it therefore differs from the baseline in ways ``alembic check`` sees, and
later batch migrations could not address (and would silently drop) unnamed
constraints.  This revision copies each table once into the baseline's exact
shape, keeping every row.  On a file Alembic created it is a harmless copy;
on PostgreSQL, which never held a v3 ledger, it does nothing.  The schema's
meaning is unchanged, so ``_meta.schema_version`` stays 3 and the downgrade
has nothing to undo.

Revision ID: 0002_sqlite_named_constraints
Revises: 0001_v3_baseline
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_sqlite_named_constraints"
down_revision: str | Sequence[str] | None = "0001_v3_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

V3_STATES = (
    "PLANNED",
    "LEASED",
    "HEAD_DONE",
    "RESUME_OK",
    "STREAMING",
    "FINALIZED",
    "INDEXED",
    "DEDUPED",
    "FAILED",
    "SKIPPED_DUPLICATE",
)


def _baseline_tables() -> list[sa.Table]:
    """The baseline's tables, frozen here as they were at this revision."""
    metadata = sa.MetaData()
    meta = sa.Table(
        "_meta",
        metadata,
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk__meta"),
    )
    jobs = sa.Table(
        "artifact_jobs",
        metadata,
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("work_id", sa.Text(), nullable=False),
        sa.Column("artifact_id", sa.Text(), nullable=False),
        sa.Column("canonical_url", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default="PLANNED", nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_until", sa.REAL(), nullable=True),
        sa.Column("created_at", sa.REAL(), nullable=False),
        sa.Column("updated_at", sa.REAL(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "state IN ({})".format(", ".join(f"'{state}'" for state in V3_STATES)),
            name="ck_artifact_jobs_state",
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_artifact_jobs"),
        sa.UniqueConstraint(
            "work_id",
            "artifact_id",
            "canonical_url",
            name="uq_artifact_jobs_work_id_artifact_id_canonical_url",
        ),
        sa.UniqueConstraint("idempotency_key", name="uq_artifact_jobs_idempotency_key"),
        sa.Index("idx_artifact_jobs_state", "state"),
        sa.Index("idx_artifact_jobs_lease", "lease_until"),
    )
    ops = sa.Table(
        "artifact_ops",
        metadata,
        sa.Column("op_key", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("op_type", sa.Text(), nullable=False),
        sa.Column("started_at", sa.REAL(), nullable=False),
        sa.Column("finished_at", sa.REAL(), nullable=True),
        sa.Column("result_code", sa.Text(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["artifact_jobs.job_id"],
            name="fk_artifact_ops_job_id_artifact_jobs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("op_key", name="pk_artifact_ops"),
        sa.Index("idx_artifact_ops_job", "job_id"),
    )
    return [meta, jobs, ops]


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in _baseline_tables():
        with op.batch_alter_table(table.name, copy_from=table, recreate="always"):
            pass


def downgrade() -> None:
    """Nothing to undo: the baseline creates exactly the shape this revision leaves."""
