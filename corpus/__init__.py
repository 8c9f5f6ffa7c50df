"""Shared core of the corpus builder: record schema, Qwen-VL text formats, shard IO, reports, CLI."""
