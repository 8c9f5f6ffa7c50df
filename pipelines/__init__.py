"""Beam pipelines: the only place, besides shard sinks, that imports Apache Beam."""
