"""An expected checksum per job (schema_version 7).

``artifact_jobs.expected_sha256`` holds the SHA-256 a manifest row vouched
for (its optional ``sha256`` column): whichever worker fetches the job, on
whichever machine, holds the download to it, and a mismatch fails the job for
good with nothing stored.  NULL: no expectation, any bytes are the artifact.

Revision ID: 0006_expected_checksum
Revises: 0005_operations
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_expected_checksum"
down_revision: str | Sequence[str] | None = "0005_operations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_meta = sa.table("_meta", sa.column("key", sa.Text), sa.column("value", sa.Text))


def upgrade() -> None:
    with op.batch_alter_table("artifact_jobs") as batch:
        batch.add_column(sa.Column("expected_sha256", sa.Text(), nullable=True))
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="7"))


def downgrade() -> None:
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="6"))
    with op.batch_alter_table("artifact_jobs") as batch:
        batch.drop_column("expected_sha256")
