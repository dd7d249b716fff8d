"""The people's edits: tombstones of forgotten faces, and the persons merged away by hand.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "face_tombstones",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("image_id", Id, nullable=False),
        sa.Column("person_id", sa.BigInteger(), nullable=False),
        sa.Column("box_x1", sa.Float(), nullable=False),
        sa.Column("box_y1", sa.Float(), nullable=False),
        sa.Column("box_x2", sa.Float(), nullable=False),
        sa.Column("box_y2", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name="fk_face_tombstones_image_id_images", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_face_tombstones"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_face_tombstones_image_id", "face_tombstones", ["image_id"])
    op.create_index("ix_face_tombstones_person_id", "face_tombstones", ["person_id"])
    op.create_table(
        "person_merges",
        sa.Column("person_id", Id, autoincrement=False, nullable=False),
        sa.Column("into_person_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("person_id", name="pk_person_merges"),
    )


def downgrade() -> None:
    op.drop_table("person_merges")
    op.drop_index("ix_face_tombstones_person_id", table_name="face_tombstones")
    op.drop_index("ix_face_tombstones_image_id", table_name="face_tombstones")
    op.drop_table("face_tombstones")
