"""Stage manifests: which shards a training stage reads, with counts, weights and checksums."""
