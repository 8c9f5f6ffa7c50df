"""SynthDoG (clovaai/donut's synthetic document generator) on synthtiger, with a quad per line.

`compat` patches NumPy/Pillow for synthtiger 1.2.1 and must come before any synthtiger import.
"""
from renderers.synthdog import compat  # noqa: F401
