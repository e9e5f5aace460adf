"""Where glue-astrovlm keeps what it remembers between runs: the recent models the panels offer and
the CPU precision chosen for each model shape. Nothing here is a secret: API keys stay in the
environment and are never written."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["config_folder"]


def config_folder() -> Path:
    """``$ASTROVLM_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/glue-astrovlm`` (``~/.config/glue-astrovlm``)."""
    base = os.environ.get("ASTROVLM_CONFIG_DIR") or Path(os.environ.get("XDG_CONFIG_HOME",
                                                                         Path.home() / ".config")) / "glue-astrovlm"
    return Path(base)
