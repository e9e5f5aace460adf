"""The one exception type that users of glue-astrovlm see, and the messages several modules share."""

__all__ = ["AstroVLMError", "no_wcs_error"]


class AstroVLMError(Exception):
    """An error the user can fix; the message says what to do.

    The CLI prints the message and exits non-zero without a traceback, and the glue and jdaviz
    panels show it in place. Programming errors stay ordinary Python exceptions.
    """


def no_wcs_error(image_label: str, what: str) -> AstroVLMError:
    """The error for sky coordinates on an image without a celestial WCS."""
    return AstroVLMError(f"{image_label} has no celestial WCS, so {what} cannot be placed on it; give "
                         "pixel positions (x y) and sizes in pixels instead.")
