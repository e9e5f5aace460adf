"""The one exception type that users of glue-astrovlm see, and the messages several modules share."""

__all__ = ["AstroVLMError", "no_wcs_error", "in_panel_words"]


class AstroVLMError(Exception):
    """An error the user can fix; the message says what to do.

    The CLI prints the message and exits non-zero without a traceback, and the glue and jdaviz
    panels show it in place. Programming errors stay ordinary Python exceptions.
    """


def no_wcs_error(image_label: str, what: str) -> AstroVLMError:
    """The error for sky coordinates on an image without a celestial WCS."""
    return AstroVLMError(f"{image_label} has no celestial WCS, so {what} cannot be placed on it; give "
                         "pixel positions (x y) and sizes in pixels instead.")


#: How messages that name command-line options read in the glue and jdaviz panels: (pattern, words).
_PANEL_WORDS = (
    (r"pass its path, e\.g\. `--model [^`]*`", "choose that folder with the Folder… button next to the Model field"),
    (r"--model [^\s`,;)]+", "the Model field"),
    (r"--model", "the Model field"),
    (r"--adapter [^\s`,;)]+", "the Adapter field"),
    (r"--adapter", "the Adapter field"),
    (r"--size [^\s`,;)]+", "a larger Source size"),
    (r"--labels/--preset|--labels or --preset", "a label set or your own labels"),
    (r"--overwrite", "overwrite=True"),
)


def in_panel_words(message: str) -> str:
    """A message for the panels: choices named as the panel's fields, not as command-line options."""
    import re

    for pattern, words in _PANEL_WORDS:
        message = re.sub(pattern, words, message)
    return message.replace("``", "").replace("`the", "the")
