"""Measurements of the production pipeline on labelled photos."""
