"""What grouping or an edit changed about persons: the run log's stats and the `persons.updated` event's
data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class PersonChanges:
    """Ids of persons grouping (or an edit) created, merged away or emptied, and how many faces it moved;
    an edit also says which face went where."""

    model_pack: str
    kind: str  # "incremental", "recluster" or "edit"
    created: list[int] = field(default_factory=list)
    merged: list[tuple[int, int]] = field(
        default_factory=list
    )  # (source, target): source's faces went to target
    emptied: list[int] = field(default_factory=list)  # left without faces; unnamed ones are deleted
    renamed: list[int] = field(default_factory=list)  # grouping never renames; manual edits report here
    faces_assigned: int = 0  # faces that got a person after having none
    faces_moved: int = 0  # faces that went from one person to another
    faces_unassigned: int = 0  # faces that lost their person
    # Edits by hand: each face that changed person, {"face_id", "before", "after", "by": "hand"} (None:
    # no person); refusals ("not this person"), {"face_id", "person_id"}; persons hidden, shown again,
    # given a new cover, deleted (merged away, left empty, forgotten).
    faces: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, int]] = field(default_factory=list)
    hidden: list[int] = field(default_factory=list)
    shown: list[int] = field(default_factory=list)
    cover_changed: list[int] = field(default_factory=list)
    deleted: list[int] = field(default_factory=list)

    def face_moved(self, face_id: int, before: int | None, after: int | None) -> None:
        """Record a face changed by hand (nothing when it stays where it was)."""
        if before != after:
            self.faces.append({"face_id": face_id, "before": before, "after": after, "by": "hand"})

    @property
    def changed(self) -> bool:
        return bool(
            self.created
            or self.merged
            or self.emptied
            or self.renamed
            or self.faces_assigned
            or self.faces_moved
            or self.faces_unassigned
            or self.faces
            or self.refused
            or self.hidden
            or self.shown
            or self.cover_changed
            or self.deleted
        )

    def to_event_data(self) -> dict[str, Any]:
        """JSON-ready dict for `persons.updated` and the recluster run log."""
        data = asdict(self)
        data["merged"] = [list(pair) for pair in self.merged]
        return data

    @classmethod
    def from_event_data(cls, data: dict[str, Any]) -> PersonChanges:
        return cls(**{**data, "merged": [tuple(pair) for pair in data.get("merged", [])]})

    def summary(self) -> str:
        return (
            f"{self.kind} {self.model_pack}: {len(self.created)} created, {len(self.merged)} merged, "
            f"{len(self.emptied)} emptied; faces: {self.faces_assigned} assigned, {self.faces_moved} moved, "
            f"{self.faces_unassigned} unassigned"
        )
