"""image-grouping: finds the faces in uploaded photos and groups them into persons."""

__version__ = "0.1.0"
