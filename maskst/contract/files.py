"""File identity: the one SHA-256 of maskst (checkpoint sources, engine files, TensorRT plans)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (checkpoints and UNets are GBs)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
