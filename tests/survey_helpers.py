"""A real survey catalogue for the survey tests: rows on four FIRST (MiraBest) FITS images, and bad rows."""

import shutil
from pathlib import Path

import numpy as np

LABELS = ["FRI", "FRII"]
#: The bad rows and a word of the reason each must give.
BAD_ROWS = {"outside": "outside", "no-position": "position", "missing-file": "no such", "blank": "nan"}
GOOD_PER_IMAGE = 12


def make_survey(folder: Path, fits_dir: Path, fmt: str = "parquet") -> tuple[Path, int]:
    """Write ``folder/survey.<fmt>`` and its images; returns the path and the number of good rows.

    Three images are named by absolute path, one by a path relative to the table (a copy in
    ``folder/images``), one has a blank (NaN) patch; rows are RA/Dec from each image's WCS.
    """
    from astropy.io import fits
    from astropy.table import Table

    from glue_astrovlm import open_image

    def celestial(path):  # read as the package reads it: the headers' COMMENT cards hold tabs
        with open_image(path) as image:
            return image.celestial_wcs

    folder.mkdir(parents=True, exist_ok=True)
    real = sorted((fits_dir / "first_mirabest").glob("*.fits"))[:4]
    (folder / "images").mkdir(exist_ok=True)
    relative = folder / "images" / real[3].name
    shutil.copy(real[3], relative)
    with fits.open(real[0]) as hdul:
        data = hdul[0].data.astype(np.float32)
        data[20:80, 20:80] = np.nan
        blank = folder / "images" / "blank_patch.fits"
        header = celestial(real[0]).to_header()
        fits.PrimaryHDU(data, header).writeto(blank, overwrite=True)
    names = [str(real[0]), str(real[1]), str(real[2]), "images/" + relative.name]
    rows = {"id": [], "file": [], "ra": [], "dec": []}
    grid = [(x, y) for x in (90, 150, 210) for y in (80, 130, 170, 220)]
    for index, (name, path) in enumerate(zip(names, real)):
        wcs = celestial(path)
        for k, (x, y) in enumerate(grid[:GOOD_PER_IMAGE]):
            ra, dec = wcs.pixel_to_world_values(x, y)
            rows["id"].append(f"img{index}-{k:02d}")
            rows["file"].append(name)
            rows["ra"].append(float(ra))
            rows["dec"].append(float(dec))
    wcs0 = celestial(real[0])
    bad = {
        "outside": (str(real[0]), *wcs0.pixel_to_world_values(-80, -80)),
        "no-position": (str(real[1]), np.nan, np.nan),
        "missing-file": ("images/not_there.fits", *wcs0.pixel_to_world_values(150, 150)),
        "blank": ("images/blank_patch.fits", *wcs0.pixel_to_world_values(50, 50)),
    }
    for name, (path, ra, dec) in bad.items():
        # the bad rows sit between good ones, so a block holds both
        at = {"outside": 5, "no-position": 17, "missing-file": 30, "blank": 41}[name]
        for column, value in zip(("id", "file", "ra", "dec"), (name, path, float(ra), float(dec))):
            rows[column].insert(at, value)
    table = Table(rows)
    table["ra"].unit = table["dec"].unit = "deg"
    out = folder / f"survey.{fmt}"
    table.write(out, format={"parquet": "parquet", "ecsv": "ascii.ecsv"}[fmt], overwrite=True)
    return out, len(names) * GOOD_PER_IMAGE
