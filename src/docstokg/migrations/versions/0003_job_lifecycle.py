"""Job lifecycle: fenced leases, retries, job results, op status (schema_version 4).

Adds to ``artifact_jobs`` the lease epoch (the fencing token), the retry
counters and last error, and the job's result (sha256, final_path,
size_bytes); to ``artifact_ops`` a status, the attempt, the lease epoch of the
holder that ran it, and the error.  Existing rows are kept and their ops get
the status they really had:

* finished with result code OK: SUCCEEDED, replayed and never run again;
* never finished (the holder died after writing the row): IN_PROGRESS under
  epoch 0, so the next holder takes it over and runs it again, instead of the
  old ledger's empty ``{}`` "success";
* finished with any other code, or with a result the old ledger cut at 20,000
  characters into invalid JSON: FAILED, to be run again.

Two partial indexes serve the claim query and the search for stale ops.

Revision ID: 0003_job_lifecycle
Revises: 0002_sqlite_named_constraints
Create Date: 2026-11-29
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_job_lifecycle"
down_revision: str | Sequence[str] | None = "0002_sqlite_named_constraints"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOT_FINISHED = (
    "state NOT IN ('DEDUPED', 'SKIPPED_DUPLICATE') "
    "AND NOT (state = 'FAILED' AND attempts >= max_attempts)"
)
IN_PROGRESS = "status = 'IN_PROGRESS'"
OP_STATUSES = "status IN ('IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'ABANDONED')"

_meta = sa.table("_meta", sa.column("key", sa.Text), sa.column("value", sa.Text))
_ops = sa.table(
    "artifact_ops",
    sa.column("op_key", sa.Text),
    sa.column("finished_at", sa.Float),
    sa.column("result_code", sa.Text),
    sa.column("result_json", sa.Text),
    sa.column("status", sa.Text),
    sa.column("error", sa.Text),
)


def _epoch_seconds() -> sa.types.TypeEngine[float]:
    return sa.Double().with_variant(sa.REAL(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("artifact_jobs") as batch:
        batch.add_column(sa.Column("lease_epoch", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(
            sa.Column("max_attempts", sa.Integer(), server_default="5", nullable=False)
        )
        batch.add_column(sa.Column("next_attempt_at", _epoch_seconds(), nullable=True))
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("sha256", sa.Text(), nullable=True))
        batch.add_column(sa.Column("final_path", sa.Text(), nullable=True))
        batch.add_column(sa.Column("size_bytes", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("artifact_ops") as batch:
        batch.add_column(
            sa.Column("status", sa.Text(), server_default="IN_PROGRESS", nullable=False)
        )
        batch.add_column(sa.Column("attempt", sa.Integer(), server_default="1", nullable=False))
        batch.add_column(sa.Column("lease_epoch", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("error", sa.Text(), nullable=True))
        batch.create_check_constraint(op.f("ck_artifact_ops_status"), OP_STATUSES)

    _classify_existing_ops()

    op.create_index(
        "ix_artifact_jobs_claim",
        "artifact_jobs",
        ["created_at", "job_id"],
        sqlite_where=sa.text(NOT_FINISHED),
        postgresql_where=sa.text(NOT_FINISHED),
    )
    op.create_index(
        "ix_artifact_ops_in_progress",
        "artifact_ops",
        ["started_at"],
        sqlite_where=sa.text(IN_PROGRESS),
        postgresql_where=sa.text(IN_PROGRESS),
    )
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="4"))


def _classify_existing_ops() -> None:
    finished = _ops.c.finished_at.is_not(None)
    op.execute(
        _ops.update()
        .where(finished, _ops.c.result_code == "OK", _ops.c.result_json.is_not(None))
        .values(status="SUCCEEDED")
    )
    op.execute(
        _ops.update()
        .where(finished, _ops.c.status != "SUCCEEDED")
        .values(status="FAILED", error="recorded without a successful result before schema 4")
    )
    if context_is_offline():
        return
    # Replay hands back a JSON object: a success whose result is not one (the
    # old ledger cut results at 20,000 characters) must run again instead.
    successes = op.get_bind().execute(
        sa.select(_ops.c.op_key, _ops.c.result_json).where(_ops.c.status == "SUCCEEDED")
    )
    broken = [key for key, result in successes if not _is_json_object(result)]
    for key in broken:
        op.execute(
            _ops.update()
            .where(_ops.c.op_key == key)
            .values(status="FAILED", error="result was not a whole JSON object (invalid JSON)")
        )


def context_is_offline() -> bool:
    return op.get_context().as_sql


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def downgrade() -> None:
    # Schema 3 code would replay any op row as a success (an unfinished one as
    # "{}"): keep only the real successes, so everything else runs again.
    op.execute(_ops.delete().where(_ops.c.status != "SUCCEEDED"))
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="3"))
    op.drop_index("ix_artifact_ops_in_progress", table_name="artifact_ops")
    op.drop_index("ix_artifact_jobs_claim", table_name="artifact_jobs")
    with op.batch_alter_table("artifact_ops") as batch:
        batch.drop_constraint(op.f("ck_artifact_ops_status"), type_="check")
        batch.drop_column("error")
        batch.drop_column("lease_epoch")
        batch.drop_column("attempt")
        batch.drop_column("status")
    with op.batch_alter_table("artifact_jobs") as batch:
        batch.drop_column("size_bytes")
        batch.drop_column("final_path")
        batch.drop_column("sha256")
        batch.drop_column("last_error")
        batch.drop_column("next_attempt_at")
        batch.drop_column("max_attempts")
        batch.drop_column("attempts")
        batch.drop_column("lease_epoch")
