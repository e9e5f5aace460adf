"""The output folder of a survey run: Parquet shards, a manifest of finished shards, and the merged tables.

``--out tags`` makes the folder ``tags/``:

- ``shards/part-NNNNNN.parquet``: rows as they finish (done and failed alike), each written to a
  temporary file and renamed;
- ``manifest.json``: what was asked and which shards are finished, rewritten atomically after each
  shard. A shard missing from it does not count; a resumed run (``--resume``) skips exactly the
  rows of the shards it lists, and never writes a row twice;
- at the end, ``tags.ecsv`` (or ``.fits``): every row tagged, in catalogue order; ``tags_failed``:
  the rows that could not be cut out, with the reason in ``error``; ``regions/<image>.reg``: one
  DS9 (or CRTF) region file per image, named by its file name less the FITS suffix, with the image's
  path in a ``# image:`` comment.

The lock and the checks of existing outputs are `~glue_astrovlm.outputs.RunOutputs`', as for a run
on one image.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from ..errors import AstroVLMError
from ..outputs import RunOutputs, different_options
from ..results import atomic_write, output_path

__all__ = ["SurveyOutputs", "MANIFEST"]

log = logging.getLogger("glue_astrovlm")

MANIFEST = "manifest.json"


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise AstroVLMError(
            "Survey runs write Parquet shards, which needs pyarrow: "
            "pip install 'glue-astrovlm[ray]' (or pip install pyarrow)."
        ) from None
    return pyarrow


def _with_image_comment(text: str, source: str) -> str:
    """A region file's text with ``# image: <path>`` after its first (format) line, so that each file
    says which image its shapes belong to."""
    first, newline, rest = text.partition("\n")
    image = " ".join(str(source).split())  # one line, whatever the path holds
    return f"{first}{newline or chr(10)}# image: {image}\n{rest}"


class SurveyOutputs:
    """The folder one survey run writes (see the module notes).

    Parameters
    ----------
    out : path-like
        The folder.
    table_format, region_format, overwrite, resume
        As for `~glue_astrovlm.outputs.RunOutputs`.
    """

    def __init__(
        self,
        out,
        *,
        table_format: str = "ecsv",
        region_format: str | None = "ds9",
        overwrite: bool = False,
        resume: bool = False,
    ):
        self.dir = Path(out).expanduser()
        if not self.dir.name:
            raise AstroVLMError("The output folder name is empty; give one such as --out tags.")
        name = self.dir.name
        self.run = RunOutputs(
            self.dir / name, table_format=table_format, region_format=None, overwrite=overwrite, resume=resume
        )
        self.region_format = region_format
        self.table_path = self.run.table_path
        self.failed_path = output_path(self.dir / f"{name}_failed", table_format)
        self.regions_dir = self.dir / "regions"
        self.shards_dir = self.dir / "shards"
        self.manifest_path = self.dir / MANIFEST
        self.manifest: dict = {}
        self.done: set[int] = set()

    # ------------------------------------------------------------------ before any work
    def reserve(self, described: dict, total: int, fingerprint: str | None = None) -> "SurveyOutputs":
        """Check the folder, take its lock and read what an earlier run finished. ``fingerprint``
        identifies the catalogue's rows (`SurveyCatalog.fingerprint`): a resume of another is refused."""
        if self.dir.exists() and not self.dir.is_dir():
            raise AstroVLMError(f"{self.dir} is a file; survey runs write a folder. Choose another --out.")
        _pyarrow()
        if not (self.run.resume or self.run.overwrite):
            self._refuse_an_earlier_run(self._read_manifest())
        self.run.reserve()
        try:
            self._start(described, total, fingerprint)
        except BaseException:
            self.run.release()
            raise
        return self

    def _start(self, described: dict, total: int, fingerprint: str | None = None) -> None:
        earlier = self._read_manifest()
        if earlier is not None and not self.run.resume:
            if not self.run.overwrite:
                self._refuse_an_earlier_run(earlier)
            self.manifest_path.unlink()
            shutil.rmtree(self.shards_dir, ignore_errors=True)
            earlier = None
        if earlier is not None:
            before = earlier.get("request", {})
            changed = sorted(k for k in described if k in before and before[k] != described[k])
            if changed:
                raise AstroVLMError(
                    f"The survey run in {self.dir} was made with {different_options(changed)}; "
                    "resume with the same options, or start again with --overwrite or another "
                    "--out."
                )
            self._same_catalogue(earlier, fingerprint)
            self.manifest = earlier
            self.done = self._finished_rows()
            log.info(
                "Resuming: %d finished row(s) in %d shard(s) of %s",
                len(self.done),
                len(earlier["shards"]),
                self.dir,
            )
        else:
            self.manifest = {"version": 1, "request": described, "total": int(total), "shards": [],
                             "catalogue_fingerprint": fingerprint}
        self.shards_dir.mkdir(parents=True, exist_ok=True)

    def _refuse_an_earlier_run(self, earlier: dict | None) -> None:
        """Without --resume or --overwrite, a folder that holds a survey run (finished or not) is left
        alone; checked before the merged table's own check, which knows nothing of --resume."""
        if earlier is None:
            return
        shards = earlier.get("shards", [])
        rows = sum(int(s.get("rows", 0)) for s in shards)
        raise AstroVLMError(
            f"{self.dir} holds a survey run ({rows} finished row(s) in {len(shards)} shard(s)); pass "
            "--resume to continue it (or to merge it again), --overwrite to start again, or choose "
            "another --out."
        )

    def _same_catalogue(self, earlier: dict, fingerprint: str | None) -> None:
        """Refuse to resume on a catalogue whose rows changed since the run began (its finished rows
        would be skipped by number and their stale results kept)."""
        before = earlier.get("catalogue_fingerprint")
        if before is None or fingerprint is None or before == fingerprint:
            return
        raise AstroVLMError(
            f"The survey run in {self.dir} was made from another version of the catalogue (its files, "
            "positions, sizes or ids have changed since); resume with the catalogue as it was, or start "
            "again with --overwrite or another --out."
        )

    def _read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            if not isinstance(manifest.get("shards"), list):
                raise ValueError("no list of shards")
        except (OSError, ValueError, AttributeError) as error:
            raise AstroVLMError(
                f"Could not read {self.manifest_path} ({error}); move the folder away or pass "
                "--overwrite to start again."
            ) from None
        return manifest

    def _finished_rows(self) -> set[int]:
        pq = _pyarrow().parquet
        done: set[int] = set()
        for shard in self.manifest["shards"]:
            rows = pq.read_table(self.shards_dir / shard["name"], columns=["row"]).column("row").to_pylist()
            done.update(int(r) for r in rows)
        return done

    def release(self) -> None:
        self.run.release()

    # ------------------------------------------------------------------ while working
    def write_shard(self, rows: list[dict]) -> int:
        """Write finished rows (those not written before) as one shard and record it; returns how many."""
        pa = _pyarrow()
        rows = [r for r in rows if int(r["row"]) not in self.done]
        unique = {int(r["row"]): r for r in rows}
        if not unique:
            return 0
        number = 1 + max((int(s["name"][5:11]) for s in self.manifest["shards"]), default=0)
        name = f"part-{number:06d}.parquet"
        table = pa.Table.from_pylist(list(unique.values()))
        atomic_write(self.shards_dir / name, lambda tmp: pa.parquet.write_table(table, tmp), overwrite=True)
        self.manifest["shards"].append(
            {"name": name, "rows": len(unique), "failed": sum(1 for r in unique.values() if r["error"])}
        )
        self.done.update(unique)
        self._write_manifest()
        return len(unique)

    def _write_manifest(self) -> None:
        text = json.dumps(self.manifest, indent=1)
        atomic_write(
            self.manifest_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=True
        )

    # ------------------------------------------------------------------ at the end
    def read_rows(self):
        """Every finished row as one astropy Table, in catalogue order."""
        from astropy.table import Table

        pa = _pyarrow()
        tables = [pa.parquet.read_table(self.shards_dir / s["name"]) for s in self.manifest["shards"]]
        if not tables:
            return Table()
        arrow = pa.concat_tables(tables, promote_options="default")
        arrow = arrow.sort_by("row")
        columns = {}
        for name in arrow.column_names:
            column = arrow.column(name)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                columns[name] = np.asarray(["" if v is None else v for v in column.to_pylist()], dtype=str)
            else:
                columns[name] = column.to_numpy(zero_copy_only=False)
        return Table(columns)

    def merge(self, probability_columns: dict, labels=None) -> list[Path]:
        """Write the merged table, the failed table and one region file per image; returns the paths."""
        from ..outputs import REQUEST_KEY
        from ..results import write_table

        table = self.read_rows()
        if len(table) == 0:
            return []
        failed = table["error"] != ""
        done, bad = table[~failed], table[failed]
        written = []
        for part, path in ((done, self.table_path), (bad, self.failed_path)):
            keep = (
                [c for c in part.colnames if c != "error"]
                if part is done
                else [c for c in ("row", "source_id", "source", "ra", "dec", "x_pix", "y_pix", "error")]
            )
            part = part[keep]
            for name, unit in (("x_pix", "pix"), ("y_pix", "pix"), ("ra", "deg"), ("dec", "deg")):
                part[name].unit = unit
            part.meta.update({"generator": "glue-astrovlm", REQUEST_KEY: self.manifest["request"]})
            if probability_columns and part is not bad:
                part.meta["probability_columns"] = {c: label for label, c in probability_columns.items()}
            if len(part) or path.exists():
                written.append(write_table(part, path, overwrite=True))
        if self.region_format is not None and len(done):
            written += self._write_regions(done, probability_columns, labels)
        return written

    def _write_regions(self, table, probability_columns: dict, labels) -> list[Path]:
        from .regions import regions_per_image

        written = []
        for stem, regions, source in regions_per_image(table, probability_columns, labels):
            suffix = ".reg" if self.region_format == "ds9" else ".crtf"
            path = self.regions_dir / (stem + suffix)
            text = _with_image_comment(regions.serialize(format=self.region_format), source)
            written.append(
                atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=True)
            )
        return written

    @property
    def counts(self) -> dict:
        """Rows finished so far: ``{'rows': n, 'failed': f}``."""
        shards = self.manifest.get("shards", [])
        return {"rows": sum(s["rows"] for s in shards), "failed": sum(s["failed"] for s in shards)}
