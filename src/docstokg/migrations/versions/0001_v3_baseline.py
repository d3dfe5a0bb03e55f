"""Baseline: the hand-rolled "schema_version 3" ledger, exactly.

A database made by the old ``apply_migration`` matches this revision and is
adopted by stamping it here.  Names of the v3 indexes are kept; constraints
that v3 left unnamed get the naming convention's names (SQLite does not store
names of table constraints, so adopted files still match).

Revision ID: 0001_v3_baseline
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_v3_baseline"
down_revision: str | Sequence[str] | None = None
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


def _epoch_seconds() -> sa.types.TypeEngine[float]:
    return sa.Double().with_variant(sa.REAL(), "sqlite")


def upgrade() -> None:
    meta = op.create_table(
        "_meta",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk__meta")),
    )
    op.create_table(
        "artifact_jobs",
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("work_id", sa.Text(), nullable=False),
        sa.Column("artifact_id", sa.Text(), nullable=False),
        sa.Column("canonical_url", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default="PLANNED", nullable=False),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_until", _epoch_seconds(), nullable=True),
        sa.Column("created_at", _epoch_seconds(), nullable=False),
        sa.Column("updated_at", _epoch_seconds(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "state IN ({})".format(", ".join(f"'{state}'" for state in V3_STATES)),
            name=op.f("ck_artifact_jobs_state"),
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_artifact_jobs")),
        sa.UniqueConstraint(
            "work_id",
            "artifact_id",
            "canonical_url",
            name=op.f("uq_artifact_jobs_work_id_artifact_id_canonical_url"),
        ),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_artifact_jobs_idempotency_key")),
    )
    op.create_index("idx_artifact_jobs_state", "artifact_jobs", ["state"])
    op.create_index("idx_artifact_jobs_lease", "artifact_jobs", ["lease_until"])
    op.create_table(
        "artifact_ops",
        sa.Column("op_key", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("op_type", sa.Text(), nullable=False),
        sa.Column("started_at", _epoch_seconds(), nullable=False),
        sa.Column("finished_at", _epoch_seconds(), nullable=True),
        sa.Column("result_code", sa.Text(), nullable=True),
        sa.Column("result_json", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["artifact_jobs.job_id"],
            name=op.f("fk_artifact_ops_job_id_artifact_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("op_key", name=op.f("pk_artifact_ops")),
    )
    op.create_index("idx_artifact_ops_job", "artifact_ops", ["job_id"])
    op.bulk_insert(meta, [{"key": "schema_version", "value": "3"}])


def downgrade() -> None:
    op.drop_index("idx_artifact_ops_job", table_name="artifact_ops")
    op.drop_table("artifact_ops")
    op.drop_index("idx_artifact_jobs_lease", table_name="artifact_jobs")
    op.drop_index("idx_artifact_jobs_state", table_name="artifact_jobs")
    op.drop_table("artifact_jobs")
    op.drop_table("_meta")
