"""Label scoring from the model's likelihood, with the image-plus-prompt prefix computed once.

For an image and a label set of K labels, the probability of label k is

    p_k = exp(log P(c_k | prefix)) / sum_j exp(log P(c_j | prefix))

where ``prefix`` is the chat-templated image and prompt up to the assistant turn, and ``c_k`` is the
token sequence of the assistant's answer ``k`` up to and including its end-of-turn token (so that
``FRI`` and ``FRII`` are compared as complete answers, not as prefixes of each other).

The prefix is run once per image with the KV cache on; all K continuations of an image are then
scored in one more forward pass, as one sequence with a tree-shaped attention mask (each label's
tokens see the prefix and their own earlier tokens only), at the positions that continue the prefix
(3-D M-RoPE positions for Qwen2-VL/2.5-VL, see `positions`). `score_labels_bruteforce` is the plain
reference: one full forward pass per label.
"""

from __future__ import annotations

from typing import Sequence

from .compat import cache_keyword, returned_cache
from .positions import continuation_position_ids, extend_token_inputs

__all__ = ["score_labels_cached", "score_labels_bruteforce", "continuation_logprobs"]



def _pad(sequences: Sequence[Sequence[int]], pad_id: int):
    import torch

    width = max(len(seq) for seq in sequences)
    out = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for i, seq in enumerate(sequences):
        out[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def continuation_logprobs(first_logits, cont_logits, continuations: Sequence[Sequence[int]]):
    """Sum of log-probabilities of each continuation.

    Parameters
    ----------
    first_logits : torch.Tensor
        ``(N, V)`` logits at the last prefix position (they predict the first continuation token).
    cont_logits : torch.Tensor or None
        ``(N, L, V)`` logits at the continuation positions (position j predicts token j+1).
    continuations : list of list of int
        Token ids of the N continuations (right-padded inside the tensors).

    Returns
    -------
    torch.Tensor
        ``(N,)`` float32 total log-probabilities.
    """
    import torch

    n = len(continuations)
    ids = _pad(continuations, 0).to(first_logits.device)
    lengths = torch.tensor([len(c) for c in continuations], device=first_logits.device)
    first = torch.log_softmax(first_logits.float(), dim=-1).gather(1, ids[:, :1]).squeeze(1)
    total = first
    if ids.shape[1] > 1:
        logp = torch.log_softmax(cont_logits[:, : ids.shape[1] - 1].float(), dim=-1)
        rest = logp.gather(2, ids[:, 1:, None]).squeeze(2)  # (N, L-1)
        valid = torch.arange(1, ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        total = total + (rest * valid).sum(1)
    return total.reshape(n)


def _tree_inputs(continuations: Sequence[Sequence[int]], prefix_len: int):
    """All continuations (minus their last token) as one sequence, with each token's position and a
    mask letting it see the prefix and the earlier tokens of its own continuation only."""
    import torch

    tokens, positions, owner = [], [], []
    for k, cont in enumerate(continuations):
        for j, token in enumerate(cont[:-1]):
            tokens.append(token)
            positions.append(prefix_len + j)
            owner.append(k)
    owner_t = torch.tensor(owner)
    offset = torch.tensor(positions)
    same = owner_t[:, None] == owner_t[None, :]
    causal = offset[None, :] <= offset[:, None]
    allowed = torch.cat([torch.ones(len(tokens), prefix_len, dtype=torch.bool), same & causal], dim=1)
    return tokens, positions, owner, allowed


def score_labels_cached(model, prefix_inputs: dict, continuations: Sequence[Sequence[int]], pad_id: int):
    """Log-likelihood of every continuation for every prefix in a batch, reusing the prefix KV cache.

    The prefix (image and prompt) runs once per image. All K continuations of an image are then
    scored in one more forward pass as a single sequence whose 4-D attention mask lets each token see
    the prefix and its own continuation only (a "tree"), so the cache is neither copied K times nor
    padded.

    Parameters
    ----------
    model : transformers model
        An ``AutoModelForImageTextToText`` in eval mode.
    prefix_inputs : dict
        Processor output for B prefixes of equal length (no padding), already on the model's device.
    continuations : list of list of int
        The K label continuations (token ids), shared by all prefixes.
    pad_id : int
        The pad token (unused: continuations are never padded); kept for callers.

    Returns
    -------
    torch.Tensor
        ``(B, K)`` total log-probabilities.
    """
    import torch

    with torch.inference_mode():
        out = model(**prefix_inputs, use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
        device = first.device
        batch, prefix_len = prefix_inputs["input_ids"].shape
        first_ids = torch.tensor([c[0] for c in continuations], device=device)
        scores = first[:, first_ids]  # (B, K)
        tokens, positions, owner, allowed = _tree_inputs(continuations, prefix_len)
        if not tokens:
            return scores
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        mask = mask.to(device)[None, None].expand(batch, 1, *allowed.shape)
        ids = torch.tensor(tokens, device=device)[None].expand(batch, -1)
        position_ids = continuation_position_ids(model, prefix_inputs, positions).to(device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=True,
                       **{cache_keyword(model): returned_cache(out)}).logits
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        next_ids = torch.tensor([continuations[k][positions[t] - prefix_len + 1] for t, k in enumerate(owner)],
                                device=device)
        token_logp = logp.gather(2, next_ids[None, :, None].expand(batch, -1, 1)).squeeze(2)  # (B, T)
        owner_t = torch.tensor(owner, device=device)
        scores = scores.index_add(1, owner_t, token_logp)
    return scores


def score_labels_bruteforce(model, prefix_inputs: dict, continuations: Sequence[Sequence[int]]):
    """Reference scoring: one complete forward pass (image, prompt and label) per label and prefix.

    Same arguments and return value as `score_labels_cached`; used by the tests and as a benchmark
    baseline.
    """
    import torch

    ids = prefix_inputs["input_ids"]
    batch, prefix_len = ids.shape
    rows = []
    with torch.inference_mode():
        for b in range(batch):
            row = []
            single = {key: value[b : b + 1] if hasattr(value, "shape") and value.shape[:1] == (batch,) else value
                      for key, value in prefix_inputs.items()}
            for cont in continuations:
                cont_ids = torch.as_tensor([cont], dtype=torch.long, device=ids.device)
                full = extend_token_inputs(single, len(cont))
                full["input_ids"] = torch.cat([single["input_ids"], cont_ids], dim=1)
                if "attention_mask" in single:
                    full["attention_mask"] = torch.ones_like(full["input_ids"])
                # only the logits that predict the label's tokens (the last len(cont) + 1 positions)
                logits = model(**full, use_cache=False, logits_to_keep=len(cont) + 1).logits[0]
                logp = torch.log_softmax(logits[: len(cont)].float(), dim=-1)
                row.append(logp[torch.arange(len(cont), device=ids.device), cont_ids[0]].sum())
            rows.append(torch.stack(row))
    return torch.stack(rows)
