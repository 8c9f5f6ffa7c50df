"""Cleaning rules: pure Python, no Beam. A rule returns None (keep), a reason (drop) or a cleaned sample."""
