"""Readers for local files and the packaged datasets."""
