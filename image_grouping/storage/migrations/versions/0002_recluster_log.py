"""Log of recluster runs; index images by the uploader's id.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "recluster_runs",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("stats", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_recluster_runs"),
        sa.CheckConstraint("status IN ('running', 'done', 'failed')", name=op.f("ck_recluster_runs_status")),
        sqlite_autoincrement=True,  # never reuse an id, as SQLite would after a delete
    )
    op.create_index("ix_recluster_runs_kind_started_at", "recluster_runs", ["kind", "started_at"])
    op.create_index("ix_images_source_id", "images", ["source_id"])


def downgrade() -> None:
    op.drop_index("ix_images_source_id", table_name="images")
    op.drop_table("recluster_runs")
