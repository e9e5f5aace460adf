"""Position ids of text that continues an image-and-prompt prefix, for 1-D and multimodal (M-RoPE) models.

Most VLMs number tokens 0, 1, 2, ...: a label token ``j`` after a prefix of length ``n`` sits at
``n + j``. Qwen2-VL and Qwen2.5-VL give image tokens 3-D positions (time, row, column) that advance
by the image's side in merged patches, not by its token count; text after the image continues from
the largest position used. Each prefix then has an offset ``delta`` (its last position + 1 minus its
length), which `get_rope_index` computes from the prefix, and a text token at 1-D offset ``t`` has
the position ``t + delta`` in all three axes. The tree-masked label scorer passes these explicitly.
"""

from __future__ import annotations

import inspect

__all__ = ["rope_index_owner", "continuation_position_ids", "extend_token_inputs"]

#: Processor outputs that hold one value per token (besides input_ids and attention_mask); text
#: appended to a prefix gets 0 (text) in each.
TOKEN_ALIGNED = ("mm_token_type_ids", "token_type_ids")


def rope_index_owner(model):
    """The module whose ``get_rope_index`` numbers multimodal positions, or `None` for 1-D positions."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for candidate in (getattr(base, "model", None), base):
        if candidate is not None and callable(getattr(candidate, "get_rope_index", None)):
            return candidate
    return None


def _prefix_offsets(owner, prefix_inputs: dict):
    """``(B, 1)`` offsets of text positions after each prefix (M-RoPE ``rope_deltas``)."""
    accepted = inspect.signature(owner.get_rope_index).parameters
    kwargs = {
        key: value
        for key, value in prefix_inputs.items()
        if key in accepted and key != "input_ids" and value is not None
    }
    _, deltas = owner.get_rope_index(prefix_inputs["input_ids"], **kwargs)
    return deltas.reshape(-1, 1)


def continuation_position_ids(model, prefix_inputs: dict, offsets):
    """Position ids for text tokens at 1-D ``offsets`` (one per token, from 0 at the prefix start).

    Returns a ``(B, T)`` tensor, or ``(3, B, T)`` for M-RoPE models, on the prefix's device.
    """
    import torch

    ids = prefix_inputs["input_ids"]
    batch = ids.shape[0]
    positions = torch.as_tensor(offsets, dtype=torch.long, device=ids.device)[None].expand(batch, -1)
    owner = rope_index_owner(model)
    if owner is None:
        return positions
    positions = positions + _prefix_offsets(owner, prefix_inputs).to(ids.device)
    return positions[None].expand(3, -1, -1)


def extend_token_inputs(inputs: dict, extra: int) -> dict:
    """``inputs`` whose per-token tensors (`TOKEN_ALIGNED`) are extended by ``extra`` text tokens."""
    import torch

    out = dict(inputs)
    length = inputs["input_ids"].shape[-1]
    for key in TOKEN_ALIGNED:
        value = inputs.get(key)
        if value is not None and value.shape[-1] == length:
            pad = torch.zeros(*value.shape[:-1], extra, dtype=value.dtype, device=value.device)
            out[key] = torch.cat([value, pad], dim=-1)
    return out
