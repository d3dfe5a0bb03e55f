"""Which manifests each job belongs to (schema_version 8).

``manifest_jobs`` holds one row per (manifest, job): a run claims only the
jobs of its own manifest, so one ledger serves several manifests, and an
artifact two manifests share is one job, fetched once.  Jobs planned before
this revision belong to no manifest until a run of theirs plans them again
(planning is idempotent, so the next run of a manifest adds its rows).

Revision ID: 0007_manifest_membership
Revises: 0006_expected_checksum
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_manifest_membership"
down_revision: str | Sequence[str] | None = "0006_expected_checksum"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_meta = sa.table("_meta", sa.column("key", sa.Text), sa.column("value", sa.Text))


def _epoch_seconds() -> sa.types.TypeEngine[float]:
    return sa.Double().with_variant(sa.REAL(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "manifest_jobs",
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Text(), nullable=False),
        sa.Column("added_at", _epoch_seconds(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["artifact_jobs.job_id"],
            name=op.f("fk_manifest_jobs_job_id_artifact_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("manifest", "job_id", name=op.f("pk_manifest_jobs")),
    )
    op.create_index("ix_manifest_jobs_job_id", "manifest_jobs", ["job_id"])
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="8"))


def downgrade() -> None:
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="7"))
    op.drop_index("ix_manifest_jobs_job_id", table_name="manifest_jobs")
    op.drop_table("manifest_jobs")
