"""What grouping changed about persons: the run log's stats and the `persons.updated` event's data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(slots=True)
class PersonChanges:
    """Ids of persons grouping created, merged away or emptied, and how many faces it moved."""

    model_pack: str
    kind: str  # "incremental" or "recluster"
    created: list[int] = field(default_factory=list)
    merged: list[tuple[int, int]] = field(
        default_factory=list
    )  # (source, target): source's faces went to target
    emptied: list[int] = field(default_factory=list)  # left without faces; unnamed ones are deleted
    renamed: list[int] = field(default_factory=list)  # grouping never renames; manual edits report here
    faces_assigned: int = 0  # faces that got a person after having none
    faces_moved: int = 0  # faces that went from one person to another
    faces_unassigned: int = 0  # faces that lost their person

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
