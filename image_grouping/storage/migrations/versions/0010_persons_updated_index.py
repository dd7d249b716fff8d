"""An index for the warm copy's refresh of persons before each incremental batch: the persons of a library
written since a time, without reading every person of a large library.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_persons_library_id_updated_at", "persons", ["library_id", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_persons_library_id_updated_at", table_name="persons")
