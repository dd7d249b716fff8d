"""Keep embeddings inside the faces rows on PostgreSQL.

A 512-d float32 embedding (2 KB) pushes the row past PostgreSQL's 2 KB TOAST threshold, so by default it
is compressed (random floats do not compress) and moved out of line; loading all faces for grouping then
costs one TOAST lookup per face (measured: 100k faces loaded 2x slower). Raising the table's
`toast_tuple_target` keeps rows up to 8 KB inline; larger ones are still moved out, uncompressed.
Existing rows move inline when they are next rewritten. SQL Server and SQLite keep such rows inline already.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE faces SET (toast_tuple_target = 8160)")
        op.execute("ALTER TABLE faces ALTER COLUMN embedding SET STORAGE EXTERNAL")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE faces RESET (toast_tuple_target)")
        op.execute("ALTER TABLE faces ALTER COLUMN embedding SET STORAGE EXTENDED")
