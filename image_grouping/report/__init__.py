"""The static HTML gallery of persons: `image-grouping report` and the end of a local scan."""

from image_grouping.report.gallery import write_gallery

__all__ = ["write_gallery"]
