"""Libraries: `library_id` on images, faces, persons and recluster runs; what was stored before is of the
default library. Recluster runs also name their model pack.

Only columns and indexes are added (SQLite adds a NOT NULL column with a default in place), so no table
is copied: `images.path_key` stays the unique key, the library being hashed into it for every library
but the default one (whose keys stay what they were).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

DEFAULT_LIBRARY = "default"  # as image_grouping.storage.schema says it, frozen here
_LIBRARY_TABLES = ("images", "persons", "faces", "recluster_runs")


def _library_column() -> sa.Column:
    return sa.Column("library_id", sa.Unicode(255), nullable=False, server_default=DEFAULT_LIBRARY)


def upgrade() -> None:
    for table in _LIBRARY_TABLES:
        op.add_column(table, _library_column())
    op.add_column("recluster_runs", sa.Column("model_pack", sa.String(64), nullable=True))
    op.create_index("ix_persons_library_id", "persons", ["library_id"])
    op.create_index(
        "ix_faces_library_id_model_pack_person_id", "faces", ["library_id", "model_pack", "person_id"]
    )
    op.create_index(
        "ix_recluster_runs_library_id_kind_started_at", "recluster_runs", ["library_id", "kind", "started_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_recluster_runs_library_id_kind_started_at", table_name="recluster_runs")
    op.drop_index("ix_faces_library_id_model_pack_person_id", table_name="faces")
    op.drop_index("ix_persons_library_id", table_name="persons")
    with op.batch_alter_table("recluster_runs") as batch:
        batch.drop_column("model_pack")
    for table in reversed(_LIBRARY_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("library_id")
