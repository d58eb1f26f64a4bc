"""Atomic file writes and the cache location: nothing partial ever appears under a final name."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$EVALXAI_CACHE``, else ``~/.cache/evalxai``."""
    root = cache_dir or os.environ.get("EVALXAI_CACHE") or Path.home() / ".cache" / "evalxai"
    return Path(root).expanduser()


def content_key(obj) -> str:
    """A stable SHA-256 prefix of a JSON-serialisable object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, obj) -> None:
    """Write JSON atomically (indented, non-JSON values as strings)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))
