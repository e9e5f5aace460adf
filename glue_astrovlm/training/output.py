"""Writing what `finetune` produces: atomically, and with the permissions any new file gets.

safetensors writes through a private temporary file, so weights come out readable by their owner only
(mode 0600) whatever the umask; so does any write through `tempfile.mkstemp`. An adapter or model
folder is meant to be shared with colleagues or served from another account, so every file written
here is given the mode the umask gives a new file (0644 under the usual umask 022). Text files are
written through a temporary file and renamed, and the weights, processor and configuration are saved
into a staging folder and moved into place together, so that a crash never leaves a half-written
output behind; the record (``astrovlm_adapter.json`` or ``astrovlm_model.json``), whose presence
marks a finished run, is written last.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..records import ADAPTER_RECORD, MODEL_RECORD

__all__ = ["current_umask", "file_mode", "follow_umask", "write_text_atomic", "save_output"]


def current_umask() -> int:
    """The process's umask (read from /proc on Linux, else by setting and restoring it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode the umask gives a new, non-executable file (0o644 under umask 022)."""
    return 0o666 & ~current_umask()


def follow_umask(paths) -> None:
    """Give each regular file in ``paths`` (files or folders, folders recursively) the umask's mode."""
    mode = file_mode()
    for path in map(Path, paths):
        for file in ([path] if path.is_file() else path.rglob("*") if path.is_dir() else []):
            if file.is_file() and not file.is_symlink():
                os.chmod(file, mode)


def write_text_atomic(path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file beside it, renamed into place (umask's mode)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_output(model, vlm, out_dir: Path, record: dict, adapter: bool) -> None:
    """Save the trained adapter (or model with its processor), its record and its model card in ``out_dir``.

    Parameters
    ----------
    model : torch.nn.Module
        The trained peft model (``adapter``) or transformers model.
    vlm : LocalVLM
        Its processor is saved with a whole model.
    out_dir : pathlib.Path
        The output folder; files of an earlier run with the same names are replaced.
    record : dict
        What `finetune` records; ``record['base_model']`` goes into ``adapter_config.json``.
    adapter : bool
        Save an adapter (``adapter_model.safetensors``) rather than a model folder.
    """
    from .model_card import model_card

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=out_dir))
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        if adapter:
            config_path = staging / "adapter_config.json"
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config["base_model_name_or_path"] = record["base_model"]
            config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        else:
            vlm.processor.save_pretrained(str(staging))
        (staging / "README.md").write_text(model_card(record), encoding="utf-8")
        follow_umask([staging])
        for file in sorted(staging.iterdir()):
            os.replace(file, out_dir / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    write_text_atomic(out_dir / (ADAPTER_RECORD if adapter else MODEL_RECORD),
                      json.dumps(record, indent=2, default=str))
