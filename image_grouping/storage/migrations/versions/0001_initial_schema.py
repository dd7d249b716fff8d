"""Initial schema: images, persons, faces and the cannot-links set by hand.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mssql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)
Blob = sa.LargeBinary().with_variant(mssql.VARBINARY("max"), "mssql")


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("source_id", sa.Unicode(255), nullable=True),
        sa.Column("source_path", sa.Unicode(2000), nullable=False),
        sa.Column("path_key", sa.String(64), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Unicode(1000), nullable=True),
        sa.Column("model_pack", sa.String(64), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("processed_at", Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_images"),
        sa.UniqueConstraint("path_key", name="uq_images_path_key"),
        sa.CheckConstraint("status IN ('pending', 'done', 'failed')", name=op.f("ck_images_status")),
        sqlite_autoincrement=True,  # never reuse an id, as SQLite would after a delete
    )
    op.create_index("ix_images_content_hash_model_pack", "images", ["content_hash", "model_pack"])
    op.create_index("ix_images_status_id", "images", ["status", "id"])

    op.create_table(
        "persons",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.Unicode(255), nullable=True),
        sa.Column("hidden", sa.Boolean(create_constraint=False), nullable=False),
        sa.Column("cover_face_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_persons"),
        sqlite_autoincrement=True,  # never reuse an id, as SQLite would after a delete
    )

    op.create_table(
        "faces",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("image_id", Id, nullable=False),
        sa.Column("model_pack", sa.String(64), nullable=False),
        sa.Column("face_index", sa.Integer(), nullable=False),
        sa.Column("box_x1", sa.Float(), nullable=False),
        sa.Column("box_y1", sa.Float(), nullable=False),
        sa.Column("box_x2", sa.Float(), nullable=False),
        sa.Column("box_y2", sa.Float(), nullable=False),
        sa.Column("landmarks", Blob, nullable=False),
        sa.Column("det_score", sa.Float(), nullable=False),
        sa.Column("size_px", sa.Float(), nullable=False),
        sa.Column("sharpness", sa.Float(), nullable=False),
        sa.Column("yaw", sa.Float(), nullable=False),
        sa.Column("pose", sa.String(16), nullable=False),
        sa.Column("thumbnail_path", sa.Unicode(1000), nullable=True),
        sa.Column("embedding", Blob, nullable=False),
        sa.Column("person_id", Id, nullable=True),
        sa.Column("assigned_by", sa.String(8), nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_faces"),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name="fk_faces_image_id_images", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["person_id"], ["persons.id"], name="fk_faces_person_id_persons"),
        sa.UniqueConstraint(
            "image_id", "model_pack", "face_index", name="uq_faces_image_id_model_pack_face_index"
        ),
        sa.CheckConstraint("assigned_by IN ('auto', 'manual')", name=op.f("ck_faces_assigned_by")),
        sqlite_autoincrement=True,  # never reuse an id, as SQLite would after a delete
    )
    op.create_index("ix_faces_model_pack_person_id", "faces", ["model_pack", "person_id"])
    op.create_index("ix_faces_person_id", "faces", ["person_id"])

    op.create_table(
        "cannot_links",
        sa.Column("face_id", Id, nullable=False),
        sa.Column("person_id", Id, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("face_id", "person_id", name="pk_cannot_links"),
        sa.ForeignKeyConstraint(
            ["face_id"], ["faces.id"], name="fk_cannot_links_face_id_faces", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["person_id"], ["persons.id"], name="fk_cannot_links_person_id_persons"),
    )
    op.create_index("ix_cannot_links_person_id", "cannot_links", ["person_id"])


def downgrade() -> None:
    op.drop_table("cannot_links")
    op.drop_table("faces")
    op.drop_table("persons")
    op.drop_table("images")
