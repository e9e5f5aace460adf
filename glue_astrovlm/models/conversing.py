"""The next turn of a conversation, for the local and the remote backend.

Local models keep the attention (key/value) cache of the conversation so far in the conversation's
``backend_state``. The next turn's prompt is the same tokens plus the new question: the cache is cut
back to the longest prefix the two share (an answer corrected by the astronomer changes the tokens
after it) and only the rest is run through the model. As long as that prefix covers the image
tokens, the vision tower does not run again: the image is encoded once per conversation. Models that
place text after an image by the image's grid (Qwen2-VL's multimodal rotary positions) re-encode it
each turn, because their positions are not carried in the cache.

A remote server gets every earlier turn in the ``messages`` list of an OpenAI chat request.
"""

from __future__ import annotations

import collections
import logging
import threading
import weakref

from ..errors import AstroVLMError
from ..results import Result
from .base import text_result

__all__ = ["local_turn", "remote_turn", "context_length", "ContextTooLong"]

log = logging.getLogger("glue_astrovlm")

#: Conversations whose attention cache a local model keeps (the most recently asked); an older one
#: encodes its image again at its next turn. Caches hold model memory (GPU memory on a GPU).
MAX_CACHED_CONVERSATIONS = 4
_cached: "collections.OrderedDict[int, weakref.ref]" = collections.OrderedDict()
_cached_lock = threading.Lock()


def _keep_cache(conversation) -> None:
    """Count ``conversation`` as the most recent holder of a cache; drop the caches of older ones."""
    with _cached_lock:
        _cached.pop(id(conversation), None)
        _cached[id(conversation)] = weakref.ref(conversation)
        while len(_cached) > MAX_CACHED_CONVERSATIONS:
            _, old = _cached.popitem(last=False)
            old = old()
            if old is not None:
                old.backend_state.pop("local", None)


def _cache_argument() -> str:
    """``generate``'s name of the cache: ``cache`` since transformers 5.24, ``past_key_values`` before."""
    try:
        from transformers.generation.utils import ALL_CACHE_NAMES
    except ImportError:
        return "past_key_values"
    return ALL_CACHE_NAMES[0]


def context_length(vlm) -> int | None:
    """The most tokens a local model reads (its text model's ``max_position_embeddings``), if it says."""
    config = vlm.model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if value else None


class ContextTooLong(AstroVLMError):
    """A turn that would not fit the model's context; nothing was asked and nothing was cut.

    ``turn`` is the 1-based number the refused turn would have had; ``length`` the prompt's tokens (or
    None when a server refused it), ``limit`` the context, ``prompt_alone`` whether the prompt by itself
    is already over the context (a shorter answer would not help then).
    """

    def __init__(self, message: str, *, turn: int, question: str, length: int | None = None,
                 max_new_tokens: int | None = None, limit: int | None = None):
        super().__init__(message)
        self.turn, self.question, self.length = turn, question, length
        self.max_new_tokens, self.limit = max_new_tokens, limit

    @property
    def prompt_alone(self) -> bool:
        return self.length is not None and self.limit is not None and self.length >= self.limit


def _too_long(vlm, conversation, question: str, length: int, max_new_tokens: int,
              limit: int) -> ContextTooLong:
    turn = len(conversation.turns) + 1
    if length >= limit:
        size = f"is {length} tokens, more than the {limit} tokens {vlm.name} reads at once, before any answer"
        advice = "start a new conversation (this one keeps its turns)."
    else:
        size = (f"is {length} tokens, and with up to {max_new_tokens} for the answer it would not fit the "
                f"{limit} tokens {vlm.name} reads at once")
        advice = ("start a new conversation (this one keeps its turns), or ask for a shorter answer "
                  "(max_new_tokens).")
    return ContextTooLong(
        f"Turn {turn} of this conversation ({turn - 1} earlier turn(s) and the new question) {size}. "
        f"Nothing was cut and nothing was asked: {advice}",
        turn=turn, question=question, length=length, max_new_tokens=max_new_tokens, limit=limit,
    )


def _places_text_by_image_grid(model) -> bool:
    """Models whose text positions after an image depend on its grid (kept outside the cache)."""
    return any(hasattr(module, "rope_deltas") for module in model.modules())


def _image_token_id(vlm) -> int | None:
    config = vlm.model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def _reusable_length(vlm, state: dict | None, key: tuple, ids) -> int:
    """How many leading tokens of ``ids`` (1-D) the cached conversation already holds, past its images."""
    if not state or state["key"] != key or _places_text_by_image_grid(vlm.model):
        return 0
    image_token = _image_token_id(vlm)
    if image_token is None:
        return 0
    cached = state["ids"]
    n = min(len(cached), len(ids) - 1)  # at least one new token must run through the model
    differ = (cached[:n] != ids[:n]).nonzero()
    common = int(differ[0, 0]) if len(differ) else n
    images = (ids == image_token).nonzero()
    if not len(images) or common <= int(images[-1, 0]):
        return 0
    return common


def _quiet_length_warning(vlm) -> None:
    """Silence the tokenizer's "Token indices sequence length is longer than ..." warning: conversations
    check their length against the model's context themselves, and say so in words."""
    for tokenizer in (getattr(vlm, "tokenizer", None), getattr(vlm.processor, "tokenizer", None)):
        flags = getattr(tokenizer, "deprecation_warnings", None)
        if isinstance(flags, dict):
            flags["sequence-length-is-longer-than-the-specified-maximum"] = True


def local_turn(vlm, conversation, question: str, max_new_tokens: int) -> Result:
    """Answer ``question`` as the next turn of ``conversation`` with a `LocalVLM` (not recorded here)."""
    import torch

    text = vlm.processor.apply_chat_template(conversation.messages(question), add_generation_prompt=True)
    _quiet_length_warning(vlm)  # the length is checked below, against the model's own context
    inputs = vlm.processor(
        text=[text],
        images=[[m.image for m in conversation.images]],
        return_tensors="pt",
        **vlm.processor_kwargs,
    )
    inputs = vlm._to_device(inputs)
    ids = inputs["input_ids"]
    length = ids.shape[1]
    limit = context_length(vlm)
    if limit is not None and length + max_new_tokens > limit:
        raise _too_long(vlm, conversation, question, length, max_new_tokens, limit)
    key = (id(vlm.model), vlm.name, vlm.adapter)
    state = conversation.backend_state.get("local")
    reuse = _reusable_length(vlm, state, key, ids[0])
    if reuse:
        cache = state["cache"]
        if cache.get_seq_length() > reuse:
            cache.crop(reuse - cache.get_seq_length())  # a negative count: tokens removed from the end
        arguments = {"input_ids": ids, "attention_mask": inputs["attention_mask"], _cache_argument(): cache}
    else:
        arguments = dict(inputs)
        conversation.backend_state.pop("local", None)  # free the old cache before making a new one
    with torch.inference_mode():
        output = vlm.model.generate(
            **arguments,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=vlm.tokenizer.pad_token_id,
            return_dict_in_generate=True,
        )
    sequence = output.sequences[0]
    cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)
    if cache is not None and hasattr(cache, "crop"):
        conversation.backend_state["local"] = {
            "key": key,
            "cache": cache,
            "ids": sequence[: cache.get_seq_length()],
        }
        _keep_cache(conversation)
    vlm.last_image_tokens = vlm.image_token_count(inputs)
    log.debug(
        "Conversation turn %d: %d prompt tokens, %d from the cache (image %s)",
        len(conversation) + 1,
        length,
        reuse,
        "not encoded again" if reuse else "encoded",
    )
    conversation.backend_state["reused_tokens"] = reuse
    answer = vlm.tokenizer.decode(sequence[length:], skip_special_tokens=True)
    return text_result(
        conversation.images[0], "ask", question, answer, vlm.name, vlm.adapter, vlm.last_image_tokens
    )


def _about_length(detail: str) -> bool:
    detail = detail.lower()
    return any(word in detail for word in ("context", "too long", "maximum", "max_model_len", "length"))


def remote_turn(vlm, conversation, question: str, max_new_tokens: int) -> Result:
    """Answer ``question`` as the next turn of ``conversation`` with a `RemoteVLM` (not recorded here)."""
    import base64
    import io

    def png(image) -> str:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    pictures = conversation.backend_state.get("png")
    if pictures is None:
        pictures = [png(m.image) for m in conversation.images]
        conversation.backend_state["png"] = pictures
    parts = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{picture}"}}
        for picture in pictures
    ]
    try:
        messages = conversation.messages(question, image_parts=parts)
        data, choice = vlm._chat(None, question, None, messages=messages, max_tokens=max_new_tokens)
    except AstroVLMError as error:  # ServerRefused carries the HTTP status and the server's detail
        if getattr(error, "status", None) in (400, 413, 422) and _about_length(getattr(error, "detail", "")):
            turn = len(conversation.turns) + 1
            raise ContextTooLong(
                f"{vlm.name} refused turn {turn} of this conversation ({turn - 1} earlier turn(s) and the "
                f"new question) as too long for its context: {error.detail[:300]}. Nothing was cut: start a "
                "new conversation (this one keeps its turns), or ask for a shorter answer.",
                turn=turn, question=question, max_new_tokens=max_new_tokens,
            ) from None
        raise
    answer = vlm._answer_text(choice)
    return text_result(
        conversation.images[0], "ask", question, answer, vlm.name, None, vlm._prompt_tokens(data)
    )
