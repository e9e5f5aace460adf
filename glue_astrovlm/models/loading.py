"""`load_model`: one call that loads a local or remote vision-language model by name, path or URL."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import AstroVLMError
from ..records import adapter_base_model, read_finetune_record
from .base import VLM

__all__ = ["load_model", "DEFAULT_MODEL"]

log = logging.getLogger("glue_astrovlm")

#: A real small VLM that a user's machine downloads from the Hugging Face Hub on first use.
DEFAULT_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"


def _offline_message(spec: str, error: BaseException) -> str:
    return (f"Could not load model {spec!r}: it is not in the local Hugging Face cache and could not be "
            f"downloaded ({type(error).__name__}). If this machine has no internet, download it where there is "
            f"(`hf download {spec}`), copy the folder here and pass its path, e.g. "
            f"`--model /path/to/{spec.split('/')[-1]}`; or set HF_HOME to a copied cache.")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (or $HF_ENDPOINT) accepts a TCP connection; False when offline mode is set."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}:
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _read_config(source: str, trust_remote_code: bool, local_files_only: bool):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code,
                                          local_files_only=local_files_only)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise AstroVLMError(f"{source} needs custom code from its repository. Only if you trust its authors, "
                                "pass trust_remote_code=True (--trust-remote-code).") from error
        raise AstroVLMError(f"{source} is not a model transformers can read: {error}") from error


def load_model(spec: str | os.PathLike | None = None, *, device: str | None = None, dtype=None,
               adapter: str | os.PathLike | dict | None = None, batch_size: int | None = None,
               tiling: str = "single", processor_kwargs: dict | None = None, trust_remote_code: bool = False,
               served_model: str | None = None, **remote_options) -> VLM:
    """Load a vision-language model.

    Parameters
    ----------
    spec : str or path-like, optional
        A Hugging Face Hub id (``'HuggingFaceTB/SmolVLM-256M-Instruct'``, downloaded and cached on first
        use), a local directory with a saved model, or the URL of an OpenAI-compatible server
        (``'http://127.0.0.1:8000/v1'``: vLLM, SGLang or ``transformers serve``). By default the base
        model the ``adapter`` was trained on, else `DEFAULT_MODEL`.
    device : str, optional
        ``'cuda'``, ``'cuda:1'``, ``'mps'`` or ``'cpu'``; by default the first available in that order.
    dtype : str or torch.dtype, optional
        Weights' precision; by default bfloat16 on GPU and, on CPU, the faster of float32/bfloat16.
    adapter : path-like or dict, optional
        A LoRA adapter directory (safetensors), or ``{name: path}`` for several; the first is active.
    batch_size : int, optional
        Images per forward pass (default 16 on GPU; 1 on CPU, where batching saves little time and
        each extra image costs about 0.1 GB of peak memory with SmolVLM-256M).
    tiling : {'single', 'default'}
        Image tokens per cutout: one tile (default) or the processor's own tiling; see `image_tokens`.
    processor_kwargs : dict, optional
        Extra arguments for the processor call (they override ``tiling``).
    trust_remote_code : bool
        Run Python code shipped with a Hub model. Off unless you trust its authors.
    served_model : str, optional
        For a server URL: the served model's name (asked from the server when it serves only one).
    **remote_options
        For a server URL: ``timeout``, ``max_retries``, ``concurrency``, ``api_key_env``, ``classify_method``.

    Returns
    -------
    VLM
        An object with ``ask``, ``describe`` and ``classify``.
    """
    if spec is None:
        spec = adapter_base_model(adapter) or DEFAULT_MODEL
    spec = str(spec)
    if spec.startswith(("http://", "https://")):
        if adapter is not None:
            raise AstroVLMError("Adapters are applied by the server for remote models; start the server with "
                                "the LoRA (e.g. vLLM --lora-modules) and pass its name as the served model.")
        from .remote import RemoteVLM

        return RemoteVLM(spec, served_model, **remote_options)
    if remote_options:
        raise AstroVLMError(f"Options {sorted(remote_options)} only apply to a server URL.")
    return _load_local(spec, device=device, dtype=dtype, adapter=adapter, batch_size=batch_size, tiling=tiling,
                       processor_kwargs=processor_kwargs, trust_remote_code=trust_remote_code)


def _load_local(spec, *, device, dtype, adapter, batch_size, tiling, processor_kwargs, trust_remote_code):
    from .image_tokens import processor_kwargs_for

    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~", "\\")) or spec.count("/") > 1 or path.exists()
    if looks_like_path and not path.is_dir():
        raise AstroVLMError(f"Model directory {path} does not exist. Pass an existing directory or a Hugging Face "
                            "id such as HuggingFaceTB/SmolVLM-256M-Instruct.")
    if path.is_dir() and not (path / "config.json").is_file():
        raise AstroVLMError(f"{path} has no config.json; point --model at the folder that holds the model files.")

    import torch  # noqa: F401  (heavy imports only now, when a model is first used)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    source = str(path) if path.is_dir() else spec
    # Cached copies load without touching the network; only an uncached hub id goes online, and only
    # when the hub answers at all (otherwise huggingface_hub retries for half a minute).
    local_only = True
    try:
        config = _read_config(source, trust_remote_code, local_files_only=True)
    except OSError as error:
        if path.is_dir():
            raise AstroVLMError(f"Could not read the model configuration in {path}: {error}") from error
        if not _hub_reachable():
            raise AstroVLMError(_offline_message(spec, error)) from error
        local_only = False
        try:
            config = _read_config(source, trust_remote_code, local_files_only=False)
        except OSError as error:
            raise AstroVLMError(_offline_message(spec, error)) from error
    from .devices import pick_device, pick_dtype

    device = pick_device(device)
    hidden = getattr(getattr(config, "text_config", config), "hidden_size", 576)
    torch_dtype = pick_dtype(device, dtype, hidden)
    try:
        processor = AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code,
                                                  local_files_only=local_only)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype, use_safetensors=True,
                                                            trust_remote_code=trust_remote_code,
                                                            local_files_only=local_only)
    except OSError as error:
        if path.is_dir():
            raise AstroVLMError(f"Could not load the model in {path}: {error}. Weights must be safetensors.") from error
        raise AstroVLMError(_offline_message(spec, error)) from error
    except ValueError as error:
        raise AstroVLMError(f"{spec} is not a vision-language model that transformers can load as "
                            f"AutoModelForImageTextToText: {error}") from error
    if getattr(processor, "chat_template", None) is None:
        raise AstroVLMError(f"{spec} has no chat template; glue-astrovlm needs an instruction-tuned (chat) VLM.")
    model.to(device).eval()
    from .local import LocalVLM

    kwargs = processor_kwargs_for(config.model_type, tiling, processor_kwargs, processor=processor)
    vlm = LocalVLM(model, processor, spec, device=device, dtype=torch_dtype,
                   batch_size=batch_size or (16 if device != "cpu" else 1), processor_kwargs=kwargs)
    if path.is_dir():
        record = read_finetune_record(path)  # a model written by `astrovlm finetune --method full`
        if record is not None:
            vlm._records[None] = record
    log.info("Loaded %s (%s) on %s as %s; processor %s", spec, config.model_type, device,
             str(torch_dtype).replace("torch.", ""), kwargs or "defaults")
    if adapter is not None:
        adapters = adapter if isinstance(adapter, dict) else {None: adapter}
        first = None
        for name, adapter_path in adapters.items():
            loaded = vlm.load_adapter(adapter_path, name, activate=first is None)
            first = first or loaded
    return vlm
