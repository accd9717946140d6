"""Helpers every stage shares: atomic writes, content hashing, the data-root layout, stage reports."""
