"""Writing export files while hashing them, so the manifest's sha256 needs no second read."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path


class HashingFile(io.RawIOBase):
    """A write-only file that hashes what is written (the manifest's sha256, without reading back)."""

    def __init__(self, path: Path):
        self.path, self.sha, self.nbytes = path, hashlib.sha256(), 0
        self.handle = open(path, "wb")

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.nbytes

    def write(self, data) -> int:
        self.sha.update(data)
        self.nbytes += len(data)
        return self.handle.write(data)

    def close(self) -> dict:
        if not self.handle.closed:
            self.handle.close()
        super().close()
        return {"sha256": self.sha.hexdigest(), "bytes": self.nbytes}
