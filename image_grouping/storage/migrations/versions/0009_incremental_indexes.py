"""Indexes for the warm copy's refresh before each incremental batch: the faces of a library and pack
written since a time, and the count of its groupable faces (assigned by grouping, or set to a person),
each without reading every row of a large library.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_faces_library_id_model_pack_updated_at", "faces", ["library_id", "model_pack", "updated_at"]
    )
    op.create_index(
        "ix_faces_library_id_model_pack_assigned_by_person_id",
        "faces",
        ["library_id", "model_pack", "assigned_by", "person_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_faces_library_id_model_pack_assigned_by_person_id", table_name="faces")
    op.drop_index("ix_faces_library_id_model_pack_updated_at", table_name="faces")
