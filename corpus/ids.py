"""Stable sample ids: the same source always gets the same id, on any machine and any run."""
import hashlib


def sample_id(dataset: str, source_key: str) -> str:
    """A 20-hex-digit id derived from the dataset name and the sample's key inside its source."""
    digest = hashlib.blake2b(f"{dataset}\x00{source_key}".encode("utf-8"), digest_size=10)
    return digest.hexdigest()

