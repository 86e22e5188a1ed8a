"""Datasets, formats, corpora and the built-in task."""
