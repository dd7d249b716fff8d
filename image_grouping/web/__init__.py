"""The People web app (`image-grouping serve`): an HTTP API and browser pages over the people handlers."""

from image_grouping.web.app import create_app

__all__ = ["create_app"]
