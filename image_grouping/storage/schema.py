"""The tables, as SQLAlchemy Core metadata. Migrations create them; this is what the queries use.

Portable to SQL Server, PostgreSQL and SQLite: no native booleans compared with IS, no arrays, keys short
enough for SQL Server's index key limit, NVARCHAR where people's text goes, VARBINARY(max) blobs, and few
cascades (SQL Server refuses cascade paths that form cycles, so the repositories clean up persons' links).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Unicode,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.mssql import VARBINARY

from image_grouping.models.messages import DEFAULT_LIBRARY

# SQLite only auto-increments an INTEGER PRIMARY KEY, not a BIGINT one.
Id = BigInteger().with_variant(Integer(), "sqlite")
# SQL Server would otherwise get the deprecated IMAGE type.
Blob = LargeBinary().with_variant(VARBINARY("max"), "mssql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Every image, face, person and recluster run is of one library (an owner: a user, a family, a tenant);
# rows stored before libraries are of the default one (DEFAULT_LIBRARY). NVARCHAR(255): 510 bytes, well
# inside SQL Server's index key limit beside the other key columns.


def _library_column() -> Column[str]:
    return Column("library_id", Unicode(255), nullable=False, server_default=DEFAULT_LIBRARY)


AUTOMATIC = "auto"  # faces.assigned_by: set by grouping, which may change it
BY_HAND = "manual"  # set (or cleared) by a person; grouping never changes it

images = Table(
    "images",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source_id", Unicode(255), nullable=True),
    Column("source_path", Unicode(2000), nullable=False),
    # sha256 of the library and the normalised source path (the path alone in the default library, as
    # before libraries): one path is one image per library, a unique key without hitting SQL Server's
    # 1700-byte index limit, and without rebuilding the table's unique constraint
    Column("path_key", String(64), nullable=False),
    Column("content_hash", String(64), nullable=True),
    Column("size_bytes", BigInteger, nullable=True),
    Column("width", Integer, nullable=True),
    Column("height", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("error", Unicode(1000), nullable=True),
    Column("model_pack", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("processed_at", DateTime(timezone=True), nullable=True),
    _library_column(),
    UniqueConstraint("path_key"),
    CheckConstraint("status IN ('pending', 'done', 'failed')", name="status"),
    Index(None, "content_hash", "model_pack"),
    Index(None, "status", "id"),
    Index(None, "source_id"),
    sqlite_autoincrement=True,  # never reuse an id, as SQLite would after a delete
)

persons = Table(
    "persons",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", Unicode(255), nullable=True),
    Column("hidden", Boolean(create_constraint=False), nullable=False),
    Column("cover_face_id", BigInteger, nullable=True),  # no FK: it would close a cycle with faces
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    _library_column(),
    Index(None, "library_id"),
    Index(None, "library_id", "updated_at"),
    sqlite_autoincrement=True,  # never reuse an id, as SQLite would after a delete
)

faces = Table(
    "faces",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("image_id", Id, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    Column("model_pack", String(64), nullable=False),
    Column("face_index", Integer, nullable=False),  # position in the analysis; unique per image and pack
    Column("box_x1", Float, nullable=False),
    Column("box_y1", Float, nullable=False),
    Column("box_x2", Float, nullable=False),
    Column("box_y2", Float, nullable=False),
    Column("landmarks", Blob, nullable=False),  # (5, 2) float32, little-endian
    Column("det_score", Float, nullable=False),
    Column("size_px", Float, nullable=False),
    Column("sharpness", Float, nullable=False),
    Column("yaw", Float, nullable=False),
    Column("pose", String(16), nullable=False),
    Column("thumbnail_path", Unicode(1000), nullable=True),  # posix, relative to SYSTEM_STORAGE
    Column("embedding", Blob, nullable=False),  # (d,) float32, little-endian, L2-normalised
    Column("person_id", Id, ForeignKey("persons.id"), nullable=True),
    Column("assigned_by", String(8), nullable=False),
    # A person drew its box (the detector had missed it): every re-analysis analyses it there, never drops it
    Column(
        "added_by_hand",
        Boolean(create_constraint=False),
        nullable=False,
        default=False,
        server_default=false(),
    ),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Its image's library, kept here too: grouping loads a library's faces of a pack through this index
    _library_column(),
    UniqueConstraint("image_id", "model_pack", "face_index"),
    CheckConstraint(f"assigned_by IN ('{AUTOMATIC}', '{BY_HAND}')", name="assigned_by"),
    Index(None, "model_pack", "person_id"),
    Index(None, "library_id", "model_pack", "person_id"),
    # The warm copy's refresh before each incremental batch (`grouping_cache`): the faces written since,
    # and the count of groupable faces, without reading a large library's every row.
    Index(None, "library_id", "model_pack", "updated_at"),
    Index(None, "library_id", "model_pack", "assigned_by", "person_id"),
    Index(None, "person_id"),
    sqlite_autoincrement=True,  # never reuse an id, as SQLite would after a delete
)

# "This face is not that person", said by hand; grouping must respect it.
cannot_links = Table(
    "cannot_links",
    metadata,
    Column("face_id", Id, ForeignKey("faces.id", ondelete="CASCADE"), primary_key=True),
    Column("person_id", Id, ForeignKey("persons.id"), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "person_id"),
)

# What "forget this person" keeps of each erased face: the photo and the box, no embedding, no name, no
# thumbnail. Re-analysis of the photo skips a face found there again, so it is never learnt back. The
# person's id says that the command was carried out (a redelivery changes nothing). Goes with its photo.
face_tombstones = Table(
    "face_tombstones",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("image_id", Id, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    Column("person_id", BigInteger, nullable=False),  # no FK: the person is gone
    Column("box_x1", Float, nullable=False),
    Column("box_y1", Float, nullable=False),
    Column("box_x2", Float, nullable=False),
    Column("box_y2", Float, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "image_id"),
    Index(None, "person_id"),
    sqlite_autoincrement=True,
)

# Every edit of a face by hand, as committed: the person it had and the person it got (None: none), and
# what did it (assign, reject, merge, cover). Two edits of one face at once are both here, in the order
# they took the face (each edit locks the face before it reads it), the last one being the face's state.
# Goes with its face: no embedding, thumbnail or name is kept here.
face_edits = Table(
    "face_edits",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("face_id", Id, ForeignKey("faces.id", ondelete="CASCADE"), nullable=False),
    Column("from_person_id", BigInteger, nullable=True),  # no FK: persons are merged away, forgotten
    Column("to_person_id", BigInteger, nullable=True),
    Column("action", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index(None, "face_id"),
    sqlite_autoincrement=True,  # ids in the order of the edits
)

# Persons merged away by hand and the person they went into: a redelivered merge finds its work done.
person_merges = Table(
    "person_merges",
    metadata,
    Column("person_id", Id, primary_key=True, autoincrement=False),  # no FK: the person is gone
    Column("into_person_id", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

recluster_runs = Table(
    "recluster_runs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
    Column("stats", JSON, nullable=True),
    _library_column(),  # a recluster regroups one library's faces of one pack
    Column("model_pack", String(64), nullable=True),  # null: a run logged before libraries (see stats)
    CheckConstraint("status IN ('running', 'done', 'failed')", name="status"),
    Index(None, "kind", "started_at"),
    Index(None, "library_id", "kind", "started_at"),
    sqlite_autoincrement=True,  # never reuse an id, as SQLite would after a delete
)

# One row, written when the schema is created: the database's own identity. Files kept beside the database
# are named by it (thumbnails go to THUMBNAIL_SAVE_PATH/<id>/), so two databases on one machine never share
# a file although their image ids repeat. Stored in the database, it survives a change of password, host or
# URL; a hash of the URL would not.
database_identity = Table(
    "database_identity",
    metadata,
    Column("id", String(32), primary_key=True),
)
