"""The AstroVLM tray plugin (importing this module registers it with jdaviz's tray registry)."""

from .astrovlm import AstroVLM  # noqa: F401

__all__ = ["AstroVLM"]
