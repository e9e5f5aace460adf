"""A glue data factory for FITS files that glue's own reader refuses.

glue's ``fits_reader`` runs ``HDUList.verify('fix')``, which raises on header cards it cannot fix, such
as the tab characters in the COMMENT cards of every FIRST survey image (and so the MiraBest files). In the
GUI that is a modal error and the image never loads, while astropy (and the rest of this project) reads
the data and the WCS fine. This factory takes only the files that glue's check refuses, repairs what
astropy can and ignores the rest (the cards are comments), and hands the open file to glue's reader, so
everything else about the loaded data is glue's own.
"""

from __future__ import annotations

import warnings

__all__ = ["glue_refuses_header", "lenient_fits_reader", "register"]


def glue_refuses_header(filename, **kwargs) -> bool:
    """Whether ``filename`` is a FITS file whose header glue's reader would refuse."""
    from astropy.io import fits
    from glue.core.data_factories.fits import is_fits

    if not is_fits(filename, **kwargs):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(filename, ignore_missing_end=True, mode="denywrite") as hdulist:
                hdulist.verify("fix")
    except fits.verify.VerifyError:
        return True
    except Exception:  # noqa: BLE001 - anything else is for glue's own reader to report
        return False
    return False


def lenient_fits_reader(source, **kwargs):
    """glue's FITS reader, on the file opened with its unfixable header cards ignored."""
    from astropy.io import fits
    from glue.core.data_factories.fits import fits_reader

    hdulist = fits.open(source, ignore_missing_end=True, mode="denywrite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hdulist.verify("silentfix+ignore")
    return fits_reader(hdulist, **kwargs)


_registered = False


def register() -> None:
    """Add the factory to glue's registry (once), just above glue's own FITS reader."""
    global _registered
    if _registered:
        return
    from glue.config import data_factory

    data_factory(label="FITS file (header cards repaired)", identifier=glue_refuses_header,
                 priority=101)(lenient_fits_reader)
    _registered = True
