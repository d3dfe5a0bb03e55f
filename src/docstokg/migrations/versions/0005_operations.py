"""What operators ask, answered from indexes (schema_version 6).

``artifact_ops.duration_s`` holds how long an op's last run took (set when it
finishes; backfilled here from finished_at - started_at), so duration
percentiles by kind are read off an index instead of computed over every op.
Indexes serve ``docstokg job status --window-s`` (jobs created since, by
state), ``job stats`` (jobs that reached a state since; FAILED jobs by error
and budget; steps that ran more than once; abandoned ops) without scanning
the tables.  ``(state, updated_at)`` replaces
v3's ``idx_artifact_jobs_state`` (the downgrade puts it back).

Revision ID: 0005_operations
Revises: 0004_content_index
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_operations"
down_revision: str | Sequence[str] | None = "0004_content_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RETRIED = "attempt > 1"
FAILED = "state = 'FAILED'"
UNHEALTHY = "status IN ('FAILED', 'ABANDONED')"
TIMED = "duration_s IS NOT NULL"

_meta = sa.table("_meta", sa.column("key", sa.Text), sa.column("value", sa.Text))
_ops = sa.table(
    "artifact_ops",
    sa.column("started_at", sa.Float),
    sa.column("finished_at", sa.Float),
    sa.column("duration_s", sa.Float),
    sa.column("status", sa.Text),
)


def _epoch_seconds() -> sa.types.TypeEngine[float]:
    return sa.Double().with_variant(sa.REAL(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("artifact_ops") as batch:
        batch.add_column(sa.Column("duration_s", _epoch_seconds(), nullable=True))
    op.execute(
        _ops.update()
        # As the code does: successes and failures are timed; abandoned ops are not.
        .where(_ops.c.finished_at.is_not(None), _ops.c.status.in_(["SUCCEEDED", "FAILED"]))
        .values(duration_s=_ops.c.finished_at - _ops.c.started_at)
    )
    op.create_index("ix_artifact_jobs_created_state", "artifact_jobs", ["created_at", "state"])
    op.create_index("ix_artifact_jobs_state_updated", "artifact_jobs", ["state", "updated_at"])
    # Every query idx_artifact_jobs_state served, the new index serves, and one
    # index fewer is one write fewer on every state move.
    op.drop_index("idx_artifact_jobs_state", table_name="artifact_jobs")
    _partial_index(
        "ix_artifact_jobs_failed",
        "artifact_jobs",
        ["last_error", "attempts", "max_attempts", "created_at"],
        FAILED,
    )
    _partial_index(
        "ix_artifact_ops_retried", "artifact_ops", ["op_type", "job_id", "attempt"], RETRIED
    )
    _partial_index(
        "ix_artifact_ops_kind_duration", "artifact_ops", ["op_type", "duration_s"], TIMED
    )
    _partial_index("ix_artifact_ops_unhealthy", "artifact_ops", ["op_type", "status"], UNHEALTHY)
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="6"))


def _partial_index(name: str, table: str, columns: list[str], where: str) -> None:
    op.create_index(
        name, table, columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where)
    )


def downgrade() -> None:
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="5"))
    op.drop_index("ix_artifact_ops_unhealthy", table_name="artifact_ops")
    op.drop_index("ix_artifact_ops_kind_duration", table_name="artifact_ops")
    op.drop_index("ix_artifact_ops_retried", table_name="artifact_ops")
    op.drop_index("ix_artifact_jobs_failed", table_name="artifact_jobs")
    op.create_index("idx_artifact_jobs_state", "artifact_jobs", ["state"])
    op.drop_index("ix_artifact_jobs_state_updated", table_name="artifact_jobs")
    op.drop_index("ix_artifact_jobs_created_state", table_name="artifact_jobs")
    with op.batch_alter_table("artifact_ops") as batch:
        batch.drop_column("duration_s")
