"""Adapters to other merging frameworks."""
