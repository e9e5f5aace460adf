"""glue datasets as engine image sources, and the one rule for a dataset's celestial WCS."""

from __future__ import annotations

import numpy as np
from astropy.wcs import WCS

from ..errors import AstroVLMError

__all__ = ["celestial_wcs_of", "component_of", "image_source_from_data", "find_image_data", "is_rendered_picture"]

#: Component names that glue's image reader gives the bands of a colour picture.
_COLOUR_BANDS = ("red", "green", "blue")


def _colour_bands(data):
    names = {c.label.lower(): c for c in data.main_components}
    if data.ndim == 2 and all(band in names for band in _COLOUR_BANDS):
        return [names[band] for band in _COLOUR_BANDS]
    return None


def is_rendered_picture(data, values) -> bool:
    """Whether a dataset is a picture already rendered for display (sent to the model as it is).

    True for 8-bit pixels without a celestial WCS (glue's reader of PNG and JPEG files), and for the
    0-1 floats without coordinates that jdaviz's image importer makes of a PNG or JPEG file.
    """
    if isinstance(getattr(data, "coords", None), WCS) or getattr(values, "ndim", 0) != 2:
        return False
    if values.dtype == np.uint8:
        return True
    meta = getattr(data, "meta", {}) or {}
    if meta.get("_importer") == "ImageImporter" and getattr(data, "coords", None) is None and values.dtype.kind == "f":
        finite = values[np.isfinite(values)]
        return finite.size > 0 and finite.min() >= 0 and finite.max() <= 1
    return False


def celestial_wcs_of(data):
    """The 2-D celestial WCS of a glue (or jdaviz) dataset's image plane, or `None`.

    A FITS `~astropy.wcs.WCS` gives its celestial part; a 2-D coordinate object that converts pixels
    to the sky (a GWCS orientation layer in jdaviz) is used as it is.
    """
    coords = getattr(data, "coords", None)
    if coords is None:
        return None
    if isinstance(coords, WCS):
        return coords.celestial if coords.has_celestial else None
    if getattr(coords, "pixel_n_dim", 0) == 2 and hasattr(coords, "pixel_to_world"):
        return coords
    return None


def component_of(data, attribute=None):
    """The `~glue.core.component_id.ComponentID` to read: ``attribute`` (a name or an id), else the
    dataset's first main component."""
    if attribute is None:
        if not data.main_components:
            raise AstroVLMError(f"{data.label} has no data components to send to a model.")
        return data.main_components[0]
    if isinstance(attribute, str):
        try:
            return data.id[attribute]
        except Exception:
            names = ", ".join(c.label for c in data.main_components)
            raise AstroVLMError(f"{data.label} has no component {attribute!r}; choose one of {names}.") from None
    return attribute


def image_source_from_data(data, attribute=None, *, cube: dict | None = None):
    """An engine `~glue_astrovlm.ImageSource` from a glue image or cube dataset.

    The component's array is wrapped, not copied: a cutout reads (and converts to floats) only its
    own pixels, as with a memory-mapped FITS file.

    Parameters
    ----------
    data : glue.core.data.Data
        2-D image or 3-D cube (numpy order: spectral, y, x).
    attribute : str or ComponentID, optional
        Which component; defaults to the first main component.
    cube : dict, optional
        For cubes: ``dict(mode='slice', index=12)``, ``dict(mode='sum'|'mean'|'moment0',
        spectral_range=(a, b))``; see `glue_astrovlm.reduce_cube`. Without it a cube stays a cube (a
        request then reduces it with its own ``cube``).
    """
    from ..cubes import reduce_cube
    from ..sources import from_array

    if data.ndim not in (2, 3):
        raise AstroVLMError(f"{data.label} has {data.ndim} dimension(s); the model needs an image or a cube.")
    wcs = data.coords if isinstance(data.coords, WCS) else None
    bands = _colour_bands(data) if attribute is None else None
    if bands is not None:  # a colour picture that glue read as red, green and blue components
        values = np.stack([data.get_component(band).data for band in bands])
        return from_array(values, wcs=wcs, label=data.label, rgb=True, display=values.dtype == np.uint8)
    component = data.get_component(component_of(data, attribute))
    source = from_array(component.data, wcs=wcs, label=data.label, unit=getattr(component, "units", None) or None,
                        display=is_rendered_picture(data, component.data))
    if data.ndim == 3 and cube is not None:
        source = reduce_cube(source, **cube)
    elif cube is not None:
        raise AstroVLMError(f"{data.label} is a 2-D image; cube options do not apply.")
    return source


def find_image_data(subset_or_data):
    """The glue Data behind a subset (or the data itself)."""
    return getattr(subset_or_data, "data", subset_or_data)
