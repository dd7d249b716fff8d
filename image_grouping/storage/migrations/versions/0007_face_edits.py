"""The record of edits of faces by hand (face_edits).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "face_edits",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("face_id", Id, nullable=False),
        sa.Column("from_person_id", sa.BigInteger(), nullable=True),
        sa.Column("to_person_id", sa.BigInteger(), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["face_id"], ["faces.id"], name="fk_face_edits_face_id_faces", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_face_edits"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_face_edits_face_id", "face_edits", ["face_id"])


def downgrade() -> None:
    op.drop_index("ix_face_edits_face_id", table_name="face_edits")
    op.drop_table("face_edits")
