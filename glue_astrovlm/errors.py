"""The one exception type that users of glue-astrovlm see."""

__all__ = ["AstroVLMError"]


class AstroVLMError(Exception):
    """An error the user can fix; the message says what to do.

    The CLI prints the message and exits non-zero without a traceback, and the glue and jdaviz
    panels show it in place. Programming errors stay ordinary Python exceptions.
    """
