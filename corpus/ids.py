"""Stable sample ids: the same source always gets the same id, on any machine and any run."""
import hashlib


def sample_id(dataset: str, source_key: str) -> str:
    """A 20-hex-digit id derived from the dataset name and the sample's key inside its source."""
    digest = hashlib.blake2b(f"{dataset}\x00{source_key}".encode("utf-8"), digest_size=10)
    return digest.hexdigest()


def id_number(element_id: str) -> int:
    """The integer a bucket is taken from: the id's hex prefix, or a hash of any other id, so a
    reject with a free-form id still lands in a stable bucket."""
    try:
        return int(element_id[:12], 16)
    except ValueError:
        return int(hashlib.blake2b(element_id.encode("utf-8"), digest_size=6).hexdigest(), 16)


def bucket_of(element_id: str, num_buckets: int) -> int:
    """Which of `num_buckets` shards a sample belongs to; derived from the id alone."""
    return id_number(element_id) % num_buckets
