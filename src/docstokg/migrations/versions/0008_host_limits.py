"""Host politeness shared by the fleet (schema_version 9).

``host_limits`` holds each host's cooldown (no request to it before
``cooldown_until``) and its rate cap's next turn (``next_request_at``);
``host_slots`` one row per request in flight to a host under a concurrency
cap, with the ``lease_until`` its holder renews, so the slots of a crashed
process lapse.  Both are written only by the host-politeness store a fleet
uses when its ledger is on PostgreSQL and it has no Redis
(:mod:`docstokg.ledger.host_limits`); nothing of the jobs depends on them,
and the downgrade drops them with whatever they held.

Revision ID: 0008_host_limits
Revises: 0007_manifest_membership
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_host_limits"
down_revision: str | Sequence[str] | None = "0007_manifest_membership"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_meta = sa.table("_meta", sa.column("key", sa.Text), sa.column("value", sa.Text))


def _epoch_seconds() -> sa.types.TypeEngine[float]:
    return sa.Double().with_variant(sa.REAL(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "host_limits",
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("cooldown_until", _epoch_seconds(), nullable=False),
        sa.Column("next_request_at", _epoch_seconds(), nullable=False),
        sa.PrimaryKeyConstraint("host", name=op.f("pk_host_limits")),
    )
    op.create_table(
        "host_slots",
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("lease_until", _epoch_seconds(), nullable=False),
        sa.PrimaryKeyConstraint("host", "holder", name=op.f("pk_host_slots")),
    )
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="9"))


def downgrade() -> None:
    op.execute(_meta.update().where(_meta.c.key == "schema_version").values(value="8"))
    op.drop_table("host_slots")
    op.drop_table("host_limits")
