"""Vision-language model backends behind one interface (`VLM`): local transformers or a remote server."""

from .base import VLM, OperationCancelled
from .loading import load_model

__all__ = ["VLM", "OperationCancelled", "load_model"]
