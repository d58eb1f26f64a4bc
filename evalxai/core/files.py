"""Atomic file writes, the cache location and code fingerprints: nothing partial ever appears under a final name."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

# The evalxai package folder whose sources ``code_fingerprint`` hashes (a module attribute, so tests can point it
# at an edited copy).
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_PROC_STATUS = "/proc/self/status"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$EVALXAI_CACHE``, else ``~/.cache/evalxai``."""
    root = cache_dir or os.environ.get("EVALXAI_CACHE") or Path.home() / ".cache" / "evalxai"
    return Path(root).expanduser()


def content_key(obj) -> str:
    """A stable SHA-256 prefix of a JSON-serialisable object (sorted keys)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def code_fingerprint(*parts: str) -> str:
    """SHA-256 prefix of the ``.py`` sources below ``parts`` of the package (sub-package folders or module files
    relative to ``evalxai/``, e.g. ``"models"``, ``"api.py"``; none: the whole package, less the scripts of the paper
    folders in ``experiments/``) and of the torch version.

    Cache keys include it, so a change to the code that computes a result invalidates the stored result.
    Computed once per process per (package root, parts).
    """
    return _fingerprint(Path(PACKAGE_ROOT), tuple(parts))


@functools.cache
def _fingerprint(root: Path, parts: tuple[str, ...]) -> str:
    import torch  # numbers depend on it; imported here so that _io stays light

    files = set()
    for part in parts or (".",):
        path = root / part
        if path.is_dir():
            files.update(f for f in path.rglob("*.py")
                         if f.is_file() and "experiments" not in f.relative_to(root).parts)
        elif path.is_file():
            files.add(path)
        else:  # installed without sources (zipped, .pyc only): the version is all there is to go by
            import warnings

            from evalxai._version import __version__

            warnings.warn(f"evalxai's sources are not readable below {root} ('{part}'): cache keys fall back to "
                          f"the version {__version__} and will not notice code changes", RuntimeWarning, stacklevel=3)
            return content_key({"version": __version__, "torch": torch.__version__, "parts": parts})
    digest = hashlib.sha256(f"torch {torch.__version__}\0".encode())
    for rel in sorted(f.relative_to(root).as_posix() for f in files):
        data = (root / rel).read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:20]


def current_umask() -> int:
    """The process umask: from ``/proc/self/status`` where available, else set-and-restore (not thread-safe)."""
    try:
        with open(_PROC_STATUS) as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The final file gets the mode of a plainly created one (``0o666 & ~umask``), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with contextlib.suppress(OSError):  # a filesystem without POSIX modes keeps its own
            os.chmod(tmp, 0o666 & ~current_umask())
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
