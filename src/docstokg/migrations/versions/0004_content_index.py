"""Content index for dedupe, and the job's content type (schema_version 5).

``artifact_jobs.content_type`` holds what the server said the bytes are.  An
index on ``sha256`` finds the job that already stored a content, and a unique
partial index allows at most one DEDUPED job per sha256: the database, not a
race between two workers, decides which job owns identical bytes.

Ledgers made before this revision may hold several DEDUPED jobs with the same
sha256; the oldest keeps DEDUPED and the others become SKIPPED_DUPLICATE
(their bytes are the same content-addressed file).  The downgrade drops the
column and the indexes and keeps every state as it is.

Revision ID: 0004_content_index
Revises: 0003_job_lifecycle
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_content_index"
down_revision: str | Sequence[str] | None = "0003_job_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STORED_CONTENT = "state = 'DEDUPED'"

_meta = sa.table("_meta", sa.column("key", sa.Text), sa.column("value", sa.Text))
_jobs = sa.table(
    "artifact_jobs",
    sa.column("job_id", sa.Text),
    sa.column("state", sa.Text),
    sa.column("sha256", sa.Text),
    sa.column("created_at", sa.Float),
)


def upgrade() -> None:
    with op.batch_alter_table("artifact_jobs") as batch:
        batch.add_column(sa.Column("content_type", sa.Text(), nullable=True))
    _demote_extra_owners()
    op.create_index("ix_artifact_jobs_sha256", "artifact_jobs", ["sha256"])
    op.create_index(
        "uq_artifact_jobs_stored_content",
        "artifact_jobs",
        ["sha256"],
        unique=True,
        sqlite_where=sa.text(STORED_CONTENT),
        postgresql_where=sa.text(STORED_CONTENT),
    )
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="5"))


def _demote_extra_owners() -> None:
    """Keep one DEDUPED job per sha256 (the oldest); the rest are duplicates of it."""
    older = sa.alias(_jobs, "older")
    has_older_owner = sa.exists(
        sa.select(older.c.job_id).where(
            older.c.sha256 == _jobs.c.sha256,
            older.c.state == "DEDUPED",
            sa.or_(
                older.c.created_at < _jobs.c.created_at,
                sa.and_(older.c.created_at == _jobs.c.created_at, older.c.job_id < _jobs.c.job_id),
            ),
        )
    )
    op.execute(
        _jobs.update()
        .where(_jobs.c.state == "DEDUPED", _jobs.c.sha256.is_not(None), has_older_owner)
        .values(state="SKIPPED_DUPLICATE")
    )


def downgrade() -> None:
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="4"))
    op.drop_index("uq_artifact_jobs_stored_content", table_name="artifact_jobs")
    op.drop_index("ix_artifact_jobs_sha256", table_name="artifact_jobs")
    with op.batch_alter_table("artifact_jobs") as batch:
        batch.drop_column("content_type")
