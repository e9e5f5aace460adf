"""The files of one run: checked and held before any work, written together, partial runs resumable.

`RunOutputs` is what ``astrovlm classify/ask/describe --out PREFIX`` writes through:

- **Before any work** it checks the output name (not empty, not a folder, a parent that is a folder)
  and the files already there, and takes a lock (``PREFIX.lock``), so that a second run with the same
  ``--out`` stops at once instead of after computing every result.
- **Written together**: the table and the region file of a run are written to temporary files and
  renamed one after the other, so that the two always come from the same run.
- **Partial runs**: an interrupted, cancelled or failed run writes what it finished, marked
  ``partial`` in the table's metadata. It goes to ``PREFIX.<ext>``, unless a complete table is there
  already: that one is never replaced by a partial one, and the partial results go to
  ``PREFIX.partial.<ext>``. ``resume=True`` reads the partial table back, and the run skips the
  cutouts it holds (`glue_astrovlm.results.result_key`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Sequence

from .errors import AstroVLMError
from .results import REGION_FORMATS, TABLE_FORMATS, Result, output_path, result_key

__all__ = ["RunOutputs", "PARTIAL_KEY"]

log = logging.getLogger("glue_astrovlm")

#: Table metadata key that marks a partial table; its value says how many of how many are done.
PARTIAL_KEY = "astrovlm_partial"
#: Table metadata key recording what was asked (task, labels, question, model), compared on resume.
REQUEST_KEY = "astrovlm_request"


def _is_partial(table) -> bool:
    return bool(table.meta.get(PARTIAL_KEY))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def different_options(changed) -> str:
    """``'different options (labels, question)'``: what a refused resume names, whatever the number."""
    return f"different options ({', '.join(changed)})"


class RunOutputs:
    """The table (and region file) one run writes under ``PREFIX``.

    Parameters
    ----------
    prefix : path-like
        Output name without suffix.
    table_format : str
        One of `~glue_astrovlm.results.TABLE_FORMATS`.
    region_format : str or None
        One of `~glue_astrovlm.results.REGION_FORMATS`, or `None` for no region file.
    overwrite : bool
        Replace complete outputs (only once the new run is complete).
    resume : bool
        Continue a partial run: its finished rows are kept and skipped.
    """

    def __init__(self, prefix, *, table_format: str = "ecsv", region_format: str | None = "ds9",
                 overwrite: bool = False, resume: bool = False):
        if table_format not in TABLE_FORMATS:
            raise AstroVLMError(f"Unknown table format {table_format!r}; use {', '.join(TABLE_FORMATS)}.")
        if region_format is not None and region_format not in REGION_FORMATS:
            raise AstroVLMError(f"Unknown region format {region_format!r}; use {', '.join(REGION_FORMATS)}.")
        self.prefix = Path(prefix)
        self.table_format, self.region_format = table_format, region_format
        self.overwrite, self.resume = bool(overwrite), bool(resume)
        self.table_path = output_path(self.prefix, table_format)
        self.region_path = output_path(self.prefix, region_format) if region_format else None
        partial = self.prefix.with_name(self.prefix.name + ".partial")
        self.partial_table_path = output_path(partial, table_format)
        self.partial_region_path = output_path(partial, region_format) if region_format else None
        self.lock_path = self.prefix.with_name(self.prefix.name + ".lock")
        self.previous = None  # the finished rows of a partial run, when resuming
        self._locked = False

    # ------------------------------------------------------------------ before any work
    def reserve(self) -> "RunOutputs":
        """Check the outputs and hold them for this run; raises `AstroVLMError` saying what to do."""
        for path in (self.table_path, self.region_path):
            if path is not None and path.is_dir():
                raise AstroVLMError(f"{path} is a folder; choose another --out.")
        for folder in [self.prefix.parent, *self.prefix.parent.parents]:
            if folder.exists():
                if not folder.is_dir():
                    raise AstroVLMError(f"Cannot write under {self.prefix.parent}: {folder} is a file, not a "
                                        "folder. Choose another --out.")
                if not os.access(folder, os.W_OK):
                    raise AstroVLMError(f"Cannot write in {folder} (no permission, or a read-only file "
                                        "system); choose another --out.")
                break
        self._lock()
        try:
            self._check_existing()
        except BaseException:
            self.release()
            raise
        return self

    def _lock(self) -> None:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                try:
                    holder = json.loads(self.lock_path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    holder = {}
                alive = holder.get("host") != me["host"] or _pid_alive(int(holder.get("pid", 0) or 0))
                if holder and alive:
                    raise AstroVLMError(f"Another astrovlm run (process {holder.get('pid')} on {holder.get('host')}) "
                                        f"is writing {self.prefix}; wait for it or choose another --out. If no "
                                        f"such run exists, delete {self.lock_path}.") from None
                self.lock_path.unlink(missing_ok=True)  # left by a run that died
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(me, handle)
            self._locked = True
            return
        raise AstroVLMError(f"Could not take {self.lock_path}; delete it if no astrovlm run is using it.")

    def release(self) -> None:
        """Let other runs use ``PREFIX`` again."""
        if self._locked:
            self.lock_path.unlink(missing_ok=True)
            self._locked = False

    def __enter__(self) -> "RunOutputs":
        return self.reserve()

    def __exit__(self, *exc) -> None:
        self.release()

    def _read(self, path: Path):
        from .catalogs import read_table

        try:
            return read_table(path, "results table")
        except AstroVLMError as error:
            raise AstroVLMError(f"{error} It is in the way of this run: move it, or pass --overwrite.") from None

    def _check_existing(self) -> None:
        main = self._read(self.table_path) if self.table_path.is_file() else None
        partial = self._read(self.partial_table_path) if self.partial_table_path.is_file() else None
        if self.resume:
            self.previous = partial if partial is not None else main
            if self.previous is not None:
                log.info("Resuming: %d finished row(s) in %s", len(self.previous),
                         self.partial_table_path if partial is not None else self.table_path)
            return
        existing = [p for p in (self.table_path, self.region_path, self.partial_table_path) if p and p.exists()]
        if existing and not self.overwrite:
            partial_run = (main is not None and _is_partial(main)) or partial is not None
            what = " (the results of a partial run: pass --resume to continue it)" if partial_run else ""
            raise AstroVLMError(f"{', '.join(map(str, existing))} already exists{what}; choose another --out, or "
                                "pass --overwrite to replace it.")

    @property
    def done_keys(self) -> set[str]:
        """Keys (`~glue_astrovlm.results.result_key`) of the rows a resumed run already holds."""
        if self.previous is None or len(self.previous) == 0:
            return set()
        return {result_key(row) for row in self.previous}

    def check_same_request(self, described: dict) -> None:
        """Refuse to resume a table made with another task, label set, question, stretch or model."""
        if self.previous is None:
            return
        before = self.previous.meta.get(REQUEST_KEY)
        if isinstance(before, dict):
            changed = sorted(key for key in described if key in before and before[key] != described[key])
            if changed:
                raise AstroVLMError(f"The partial results were made with {different_options(changed)}; "
                                    "resume with the same options, or start again with --overwrite or "
                                    "another --out.")

    # ------------------------------------------------------------------ writing
    def _table(self, results: Sequence[Result], described: dict | None, done: int, total: int | None):
        from astropy.table import vstack

        from .results import results_to_table

        tables = [self.previous] if self.previous is not None and len(self.previous) else []
        if results:
            tables.append(results_to_table(results))
        if not tables:
            return None
        if len(tables) == 2:
            for name in set(tables[0].colnames) & set(tables[1].colnames):
                if tables[0][name].dtype.kind != tables[1][name].dtype.kind:
                    tables[0][name] = tables[0][name].astype(str)
                    tables[1][name] = tables[1][name].astype(str)
        table = vstack(tables, join_type="outer", metadata_conflicts="silent") if len(tables) == 2 else tables[0]
        table.meta.update(tables[-1].meta)
        table.meta.pop(PARTIAL_KEY, None)
        if total is not None and done < total:
            table.meta[PARTIAL_KEY] = f"{done} of {total}"
        if described:
            table.meta[REQUEST_KEY] = described
        return table

    def _regions(self, results: Sequence[Result], labels, previous_regions: Path | None):
        from regions import Regions

        from .results import results_to_regions

        shapes = []
        if previous_regions is not None and previous_regions.is_file():
            try:
                shapes += list(Regions.read(previous_regions, format=self.region_format))
            except Exception:  # noqa: BLE001 - a damaged region file is rebuilt from this run's results
                log.warning("Could not read %s; its regions are left out.", previous_regions)
        if any(r.provenance is not None for r in results):
            shapes += list(results_to_regions(results, labels=labels))
        return Regions(shapes) if shapes else None

    def write(self, results: Sequence[Result], *, total: int | None = None, labels=None,
              described: dict | None = None) -> list[Path]:
        """Write the finished results (with a resumed run's earlier rows); returns the paths written.

        ``total`` is how many cutouts the run had to do (earlier rows included): fewer rows than that
        make the table partial.
        """
        from .results import atomic_write, write_table

        done = len(results) + (len(self.previous) if self.previous is not None else 0)
        table = self._table(results, described, done, total)
        if table is None:
            return []
        partial = PARTIAL_KEY in table.meta
        main_complete = self.table_path.is_file() and not _is_partial(self._read(self.table_path))
        to_partial = partial and main_complete
        table_path = self.partial_table_path if to_partial else self.table_path
        region_path = self.partial_region_path if to_partial else self.region_path
        earlier_regions = None
        if self.previous is not None and self.region_path is not None:
            earlier_regions = self.partial_region_path if self.partial_table_path.is_file() else self.region_path
        regions = self._regions(results, labels, earlier_regions) if region_path is not None else None
        written = [write_table(table, table_path, overwrite=True)]
        if regions is not None:
            written.append(atomic_write(region_path, lambda tmp: regions.write(tmp, format=self.region_format,
                                                                               overwrite=True), overwrite=True))
        if not partial:  # a complete run: what an earlier partial run left is now included
            for leftover in (self.partial_table_path, self.partial_region_path):
                if leftover is not None and leftover.exists():
                    leftover.unlink()
        return written
