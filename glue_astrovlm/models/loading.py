"""`load_model`: one call that loads a local or remote vision-language model by name, path or URL."""

from __future__ import annotations

import logging
import numbers
import os
from pathlib import Path

from ..errors import AstroVLMError
from ..records import adapter_base_model, read_finetune_record, unresolved_base_message
from .base import VLM

__all__ = ["load_model", "DEFAULT_MODEL", "available_offline"]

log = logging.getLogger("glue_astrovlm")

#: A real small VLM that a user's machine downloads from the Hugging Face Hub on first use.
DEFAULT_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"


def _offline_message(spec: str, error: BaseException) -> str:
    return (f"Could not load model {spec!r}: it is not in the local Hugging Face cache and could not be "
            f"downloaded ({type(error).__name__}). If this machine has no internet, download it where there "
            f"is (`hf download {spec}`), copy the folder here and pass its path, e.g. "
            f"`--model /path/to/{spec.split('/')[-1]}`; or set HF_HOME to a copied cache.")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (or $HF_ENDPOINT) accepts a TCP connection; False in offline mode."""
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
    from transformers import AutoConfig, PretrainedConfig

    from .families import check_model_type

    # the raw model_type first: transformers would otherwise fail on an unknown or half-known type with
    # its own advice (upgrade transformers, a missing attribute) instead of naming the families we load
    raw, _ = PretrainedConfig.get_config_dict(source, local_files_only=local_files_only)
    if "auto_map" not in raw:  # a model with its own code is refused below, unless trusted, for that reason
        check_model_type(raw.get("model_type"), source)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code,
                                          local_files_only=local_files_only)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise AstroVLMError(f"{source} needs custom code from its repository. Only if you trust its "
                                "authors, pass trust_remote_code=True (--trust-remote-code).") from error
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

    Raises
    ------
    AstroVLMError
        Before anything heavy loads: an unknown device or tiling, a batch size that is not a positive
        whole number, a model folder that is empty, damaged (truncated safetensors, invalid
        ``config.json``) or holds only pickled weights, or an adapter folder that is damaged or
        inconsistent. While loading: a missing tokenizer or image processor, weights that do not fit
        ``config.json``, a model that is not a chat VLM, or an adapter made for another base model.
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
    whole = isinstance(batch_size, numbers.Integral) and not isinstance(batch_size, bool)
    if batch_size is not None and (not whole or batch_size < 1):
        raise AstroVLMError(f"batch_size (--batch-size) must be a whole number of at least 1, got "
                            f"{batch_size!r}.")
    hint = unresolved_base_message(adapter) if spec == adapter_base_model(adapter) else None
    try:
        return _load_local(spec, device=device, dtype=dtype, adapter=adapter, batch_size=batch_size,
                           tiling=tiling, processor_kwargs=processor_kwargs,
                           trust_remote_code=trust_remote_code)
    except AstroVLMError as error:
        if hint is not None and not Path(spec).expanduser().is_dir():  # a relative base path, not found here
            raise AstroVLMError(f"{hint} ({error})") from None
        raise


def available_offline(spec) -> bool:
    """Whether ``spec`` loads without the network: a model folder, or a Hub id whose files are in the
    local Hugging Face cache. A server URL is not a model to load here."""
    if spec is None or "://" in str(spec):
        return False
    path = Path(spec).expanduser()
    if path.is_dir():
        return (path / "config.json").is_file()
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(str(spec), "config.json"), str)
    except Exception:  # noqa: BLE001 - not a valid Hub id either: not available
        return False


def _adapter_paths(adapter) -> list:
    if adapter is None:
        return []
    return list(adapter.values()) if isinstance(adapter, dict) else [adapter]


def _read_local_config(spec: str, path: Path, trust_remote_code: bool):
    """The model's configuration, its source (folder or Hub id) and whether to stay offline."""
    source = str(path) if path.is_dir() else spec
    # Cached copies load without touching the network; only an uncached hub id goes online, and only
    # when the hub answers at all (otherwise huggingface_hub retries for half a minute).
    try:
        return _read_config(source, trust_remote_code, local_files_only=True), source, True
    except OSError as error:
        if path.is_dir():
            raise AstroVLMError(f"Could not read the model configuration in {path}: {error}") from error
        if not _hub_reachable():
            raise AstroVLMError(_offline_message(spec, error)) from error
        try:
            return _read_config(source, trust_remote_code, local_files_only=False), source, False
        except OSError as error:
            raise AstroVLMError(_offline_message(spec, error)) from error


def _check_vocabulary(processor, config, spec: str, path: Path) -> None:
    """Refuse a tokenizer that lacks the model's vocabulary (its vocabulary files were not copied).

    transformers then builds a tokenizer from the added tokens alone, which turns every prompt into
    no tokens at all.
    """
    from .model_files import MODEL_REFETCH, missing_processor_files

    tokenizer = getattr(processor, "tokenizer", processor)
    vocab = getattr(getattr(config, "text_config", config), "vocab_size", None)
    if not vocab or len(tokenizer) * 2 >= vocab:
        return
    where = path if path.is_dir() else spec
    missing = missing_processor_files(path) if path.is_dir() else []
    what = f"it lacks {' and '.join(missing)}" if missing else "its vocabulary files are missing or damaged"
    fix = MODEL_REFETCH.format(path=path) if path.is_dir() else "download the model again"
    raise AstroVLMError(f"The tokenizer of {where} knows {len(tokenizer):,} tokens where the model has "
                        f"{vocab:,}: {what}. Copy every file of the model, not only its weights: {fix}.")


def _load_processor(source: str, spec: str, path: Path, trust_remote_code: bool, local_only: bool, family):
    from .families import build_processor
    from .model_files import MODEL_REFETCH, missing_processor_files

    try:
        return build_processor(family, source, trust_remote_code=trust_remote_code, local_only=local_only)
    except (OSError, ValueError, TypeError, KeyError) as error:
        if not path.is_dir():
            if isinstance(error, OSError):
                raise AstroVLMError(_offline_message(spec, error)) from error
            raise AstroVLMError(f"Could not read the processor (tokenizer and image processor) of {spec}: "
                                f"{error}") from error
        missing = missing_processor_files(path)
        what = (f"it lacks {' and '.join(missing)}" if missing
                else f"{type(error).__name__}: {str(error)[:300]}")
        raise AstroVLMError(f"Could not read the processor (tokenizer and image processor) in {path}: "
                            f"{what}. Copy every file of the model, not only its weights: "
                            f"{MODEL_REFETCH.format(path=path)}.") from error


def _damaged_weights(spec: str, path: Path, error: BaseException) -> AstroVLMError:
    from .model_files import MODEL_REFETCH

    if path.is_dir():
        return AstroVLMError(f"The weights in {path} are damaged ({error}); "
                             f"{MODEL_REFETCH.format(path=path)}.")
    from huggingface_hub.constants import HF_HUB_CACHE

    cached = Path(HF_HUB_CACHE) / f"models--{spec.replace('/', '--')}"
    return AstroVLMError(f"The weights of {spec} in the Hugging Face cache are damaged ({error}); delete "
                         f"{cached} and load the model again to download a fresh copy.")


def _load_weights(source: str, spec: str, path: Path, torch_dtype, trust_remote_code: bool, local_only: bool):
    """The model, from safetensors only; refused if its weights do not fill the architecture of its config."""
    from safetensors import SafetensorError
    from transformers import AutoModelForImageTextToText

    try:
        model, info = AutoModelForImageTextToText.from_pretrained(
            source, dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            local_files_only=local_only, output_loading_info=True)
    except SafetensorError as error:
        raise _damaged_weights(spec, path, error) from error
    except OSError as error:
        if path.is_dir():
            raise AstroVLMError(f"Could not load the model in {path}: {error}. Weights must be "
                                "safetensors.") from error
        if "safetensors" in str(error) and _hub_reachable():
            raise AstroVLMError(f"{spec} has no safetensors weights; glue-astrovlm loads safetensors only, "
                                "because reading pickled weights can run code. Use a copy of the model with "
                                "model.safetensors.") from error
        raise AstroVLMError(_offline_message(spec, error)) from error
    except ValueError as error:
        raise AstroVLMError(f"{spec} is not a vision-language model that transformers can load as "
                            f"AutoModelForImageTextToText: {error}") from error
    except RuntimeError as error:
        if "size mismatch" not in str(error) and "mismatched_sizes" not in str(error):
            raise
        raise AstroVLMError(f"The weights of {spec} do not fit its config.json: some tensors have other "
                            "shapes than the architecture it describes (the weights and config.json come "
                            "from different models). Download the model again, whole.") from error
    mismatched = {str(key) for key in info.get("mismatched_keys") or ()}
    unfilled = sorted(set(info.get("missing_keys") or ()) | mismatched)
    if unfilled:
        raise AstroVLMError(f"The weights of {spec} do not belong to the architecture in its config.json: "
                            f"{len(unfilled)} weight(s) are not in them (e.g. {', '.join(unfilled[:3])}) and "
                            "would be random. The weights and config.json come from different models; "
                            "download the model again, whole.")
    return model


def _load_local(spec, *, device, dtype, adapter, batch_size, tiling, processor_kwargs, trust_remote_code):
    from .families import family_for
    from .image_tokens import TILING_CHOICES, processor_kwargs_for, restrict_tile_grid
    from .model_files import check_adapter_folder, check_model_folder, check_model_weights

    path = Path(spec).expanduser()
    looks_like_path = spec.startswith((".", "/", "~", "\\")) or spec.count("/") > 1 or path.exists()
    if path.is_file():
        raise AstroVLMError(f"{path} is a file; pass the model's folder, which holds config.json and the "
                            f"weights ({path.parent}?).")
    if looks_like_path and not path.is_dir():
        raise AstroVLMError(f"Model directory {path} does not exist. Pass an existing directory or a Hugging "
                            "Face id such as HuggingFaceTB/SmolVLM-256M-Instruct.")
    if tiling not in TILING_CHOICES:
        raise AstroVLMError(f"Unknown tiling {tiling!r}; use one of {', '.join(TILING_CHOICES)}.")
    if path.is_dir():
        check_model_folder(path)
    for adapter_path in _adapter_paths(adapter):  # a broken adapter fails before the model loads
        check_adapter_folder(adapter_path)
    from .devices import pick_device, pick_dtype

    device = pick_device(device)
    config, source, local_only = _read_local_config(spec, path, trust_remote_code)
    family = family_for(config, str(path) if path.is_dir() else spec)
    if path.is_dir():
        check_model_weights(path)  # truncated, missing or pickled weights: before anything loads
    hidden = getattr(getattr(config, "text_config", config), "hidden_size", 576)
    torch_dtype = pick_dtype(device, dtype, hidden, config=config)
    processor = _load_processor(source, spec, path, trust_remote_code, local_only, family)
    _check_vocabulary(processor, config, spec, path)
    model = _load_weights(source, spec, path, torch_dtype, trust_remote_code, local_only)
    if getattr(processor, "chat_template", None) is None:
        raise AstroVLMError(f"{spec} has no chat template; glue-astrovlm needs an instruction-tuned (chat) "
                            "VLM.")
    model.to(device).eval()
    from .local import LocalVLM

    restrict_tile_grid(family, model, processor, tiling)
    kwargs = processor_kwargs_for(config.model_type, tiling, processor_kwargs, processor=processor)
    vlm = LocalVLM(model, processor, spec, device=device, dtype=torch_dtype,
                   batch_size=batch_size or (16 if device != "cpu" else 1), processor_kwargs=kwargs)
    vlm.family = family
    if path.is_dir():
        record = read_finetune_record(path)  # a model written by `astrovlm finetune --method full`
        if record is not None:
            vlm._records[None] = record
    log.info("Loaded %s (%s, %s family) on %s as %s; processor %s; token budget: %s", spec, config.model_type,
             family.name, device, str(torch_dtype).replace("torch.", ""), kwargs or "defaults",
             family.budget if tiling == "single" else "the processor's own tiling")
    if adapter is not None:
        adapters = adapter if isinstance(adapter, dict) else {None: adapter}
        first = None
        for name, adapter_path in adapters.items():
            loaded = vlm.load_adapter(adapter_path, name, activate=first is None)
            first = first or loaded
    return vlm
