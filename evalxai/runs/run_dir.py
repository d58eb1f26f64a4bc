"""One writer for a run folder, shared by the pipeline (``run.json``), the meta-evaluation (``meta.json``) and
activation maximization (``run.json``).

``RunDir(path, record)`` creates the folder and checks that it is writable before any work is done; ``begin()``
removes the completion record, so that until the run finishes the folder holds no complete run; tables, arrays,
plots and the report are written atomically (a temporary file renamed into place, so no partial file carries a final
name and a failed write keeps the previous file); ``finish(record)`` writes the completion record, last.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from evalxai.core.files import atomic_path, write_json, write_text
from evalxai.report.document import write_report


def writable_dir(path: str | Path) -> Path:
    """Create ``path`` and check that files can be written there, before any work is done."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / ".write_probe") as tmp:
            tmp.write_text("ok")
        (out / ".write_probe").unlink()
    except OSError as err:
        raise OSError(f"results directory '{out}' is not writable ({err.strerror or err}): choose another "
                      "hydra.run.dir (or hydra.sweep.dir)") from None
    return out


class RunDir:
    """A run folder: ``path`` (created and checked writable) and the name of its completion record (``record``,
    written last by ``finish``)."""

    def __init__(self, path: str | Path, record: str = "run.json") -> None:
        self.path = writable_dir(path)
        self.record = self.path / record

    @property
    def plots(self) -> Path:
        """The ``plots/`` subfolder (created)."""
        pdir = self.path / "plots"
        pdir.mkdir(exist_ok=True)
        return pdir

    def begin(self) -> None:
        """Remove the completion record: until ``finish``, the folder holds no complete run."""
        self.record.unlink(missing_ok=True)

    def table(self, df: pd.DataFrame, name: str, formats: tuple[str, ...] = ("parquet", "csv")) -> None:
        """Write ``df`` as ``name.parquet`` / ``name.csv`` (those of ``formats``, in that order), each atomically."""
        for fmt in formats:
            with atomic_path(self.path / f"{name}.{fmt}") as tmp:
                if fmt == "parquet":
                    df.to_parquet(tmp, index=False)
                elif fmt == "csv":
                    df.to_csv(tmp, index=False)
                else:
                    raise ValueError(f"unknown table format '{fmt}': parquet or csv")

    def csv(self, df: pd.DataFrame, name: str) -> None:
        """Write ``df`` as ``name.csv`` atomically."""
        self.table(df, name, ("csv",))

    def arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Write ``arrays`` (array name -> array) as the compressed ``name.npz`` atomically."""
        with atomic_path(self.path / f"{name}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)

    def text(self, name: str, text: str) -> None:
        """Write ``text`` into ``name`` atomically."""
        write_text(self.path / name, text)

    def report(self, title: str, blocks: list[tuple]) -> tuple[Path, Path]:
        """Write ``report.md`` and ``report.html`` (blocks as ``evalxai.report.document.write_report`` takes them)."""
        return write_report(self.path, title, blocks)

    def finish(self, record: dict) -> Path:
        """Write the completion record, last: its presence marks a complete run."""
        write_json(self.record, record)
        return self.path
