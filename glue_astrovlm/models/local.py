"""The local backend: a transformers ``AutoModelForImageTextToText`` with optional peft LoRA adapters."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import warnings
from pathlib import Path
from typing import Sequence

from ..errors import AstroVLMError
from ..labelsets import LabelSet
from ..records import read_finetune_record, resolve_base_model
from .base import VLM, ModelImage, OperationCancelled, classification_result, text_result
from .model_files import ADAPTER_REMAKE
from .scoring import score_labels_cached

__all__ = ["LocalVLM"]

log = logging.getLogger("glue_astrovlm")


def _is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, getattr(torch, "OutOfMemoryError", ())) or "out of memory" in str(error).lower()


def _same_model(a: str | None, b: str | None) -> bool:
    """Whether two model names or paths name the same model (folders compared after resolving)."""
    if not a or not b:
        return False
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.is_dir() and pb.is_dir():
        return pa.resolve() == pb.resolve()
    return a.rstrip("/") == b.rstrip("/")


def _adapter_misfit_message(files, vlm: "LocalVLM", problem: str) -> str:
    """Why an adapter that peft could not apply does not fit ``vlm``: another base model, or damaged files."""
    base = resolve_base_model(files.base_model, files.path)
    base_model = vlm.model.get_base_model() if hasattr(vlm.model, "get_base_model") else vlm.model
    this_class = type(base_model).__name__
    other_class = files.base_class is not None and files.base_class != this_class
    where = f"The adapter {files.path} does not fit {vlm.name}"
    if base and other_class:
        return (f"{where}: it was trained on {base}; load that model (--model {base}). The adapter was made "
                f"for a {files.base_class}, and this model is a {this_class}. ({problem})")
    if base and not _same_model(base, vlm.name):
        return (f"{where}: it was trained on {base}; load that model (--model {base}). If {vlm.name} is a "
                f"copy of it, the adapter's files are damaged: {ADAPTER_REMAKE}. ({problem})")
    if other_class:
        return (f"{where}: it was trained on a {files.base_class}, and this model is a {this_class}; load "
                f"the model it was trained on. ({problem})")
    if base or files.base_class:
        named = "the base model its adapter_config.json names" if base else "of the class it was made for"
        return (f"{where}, although that is {named}: {problem}. Its adapter_config.json and "
                f"adapter_model.safetensors do not match; {ADAPTER_REMAKE}.")
    return (f"{where}: {problem}. It records no base model: load the model it was trained on, or, if that is "
            f"{vlm.name}, {ADAPTER_REMAKE}.")


def _remove_adapter_layers(model) -> None:
    """Undo a failed first adapter load: put back the layers peft wrapped, drop its configuration."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import other

    # peft 0.15 added AuxiliaryTrainingWrapper as the base of ModulesToSaveWrapper
    wrapper = getattr(other, "AuxiliaryTrainingWrapper", other.ModulesToSaveWrapper)
    for module_name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            original = module.get_base_layer()
        elif isinstance(module, wrapper):
            original = module.original_module
        else:
            continue
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, original)
    if hasattr(model, "peft_config"):
        del model.peft_config


class LocalVLM(VLM):
    """A vision-language model running in this process (GPU, Apple MPS or CPU).

    Use `glue_astrovlm.load_model` to create one. Attributes worth knowing:

    Attributes
    ----------
    device : str
        ``'cuda'``, ``'mps'`` or ``'cpu'``.
    dtype : torch.dtype
        Weights' precision (bfloat16 on GPU; on CPU the faster of float32/bfloat16 measured here).
    batch_size : int
        Images per forward pass; halved automatically after a CUDA out-of-memory error.
    processor_kwargs : dict
        What the processor is called with; fixes the image tokens per cutout (see `image_tokens`).
    preprocess_workers : int
        Threads that run the processor on the images of a batch in parallel (default: 1 on CPU, where
        the model needs the cores; up to 8 on a GPU, where one core preprocessing was the bottleneck).
    adapters : list of str
        Names of the loaded LoRA adapters.
    """

    def __init__(self, model, processor, name: str, *, device: str, dtype, batch_size: int,
                 processor_kwargs: dict):
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.name = name
        self.device = device
        self.dtype = dtype
        self.batch_size = int(batch_size)
        self.processor_kwargs = dict(processor_kwargs)
        cores = os.cpu_count() or 1
        self.preprocess_workers = 1 if device == "cpu" else max(1, min(8, cores // 2))
        self._pool = None
        self.adapter = None
        self._adapters: list[str] = []
        self._records: dict[str | None, dict] = {}  # astrovlm finetune's record per adapter (None: the model)
        self._continuation_cache: dict[tuple, list[list[int]]] = {}
        self._control_token_list: list[str] | None = None  # see _control_tokens
        self.last_image_tokens: int | None = None
        self.family = None  # the `~glue_astrovlm.models.families.Family`, set by load_model
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # ------------------------------------------------------------------ adapters
    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    def load_adapter(self, path: str | Path, name: str | None = None, *, activate: bool = True) -> str:
        """Load a LoRA adapter saved as safetensors (``adapter_model.safetensors``) under ``name``.

        Parameters
        ----------
        path : path-like
            Directory written by ``astrovlm finetune`` or peft's ``save_pretrained``.
        name : str, optional
            Name to switch to it by; defaults to the directory name.
        activate : bool
            Make it the active adapter.

        Returns
        -------
        str
            The adapter's name.

        Raises
        ------
        AstroVLMError
            If the folder is not a complete safetensors adapter or is inconsistent (see
            `~glue_astrovlm.models.model_files.check_adapter_folder`), or if the adapter does not fit
            this model (the message names the base model it was trained on). The model is left as it
            was: a failed load adds no layer to it.
        """
        from .model_files import check_adapter_folder

        files = check_adapter_folder(path)
        path = files.path
        name = name or path.name
        if name in self._adapters:
            raise AstroVLMError(f"An adapter named {name!r} is already loaded; choose another name.")
        misfit = self._attach_adapter(path, name)
        if misfit is not None:
            raise AstroVLMError(_adapter_misfit_message(files, self, misfit))
        self.model.eval()
        self._adapters.append(name)
        record = read_finetune_record(path)
        if record is not None:
            self._records[name] = record
        log.info("Loaded adapter %r from %s", name, path)
        if activate:
            self.set_adapter(name)
        else:
            self.set_adapter(self.adapter)
        return name

    def _attach_adapter(self, path: Path, name: str) -> str | None:
        """Add the adapter's layers and weights with peft; on failure undo it and return what went wrong.

        Weights peft cannot place (another architecture's layer names) would leave the adapter's layers
        at their initial values: they count as a failure too.
        """
        from peft import PeftModel

        from .compat import peft_quietly

        first = not self._adapters
        try:
            with peft_quietly(), warnings.catch_warnings():
                warnings.filterwarnings("error", message="Found missing adapter keys", category=UserWarning)
                if first:
                    self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name,
                                                           is_trainable=False)
                    return None
                result = self.model.load_adapter(str(path), adapter_name=name, is_trainable=False)
            missing = list(result.missing_keys)
            if not missing:
                return None
            problem = (f"its weights lack {len(missing)} of the LoRA tensors its configuration adds to this "
                       f"model (e.g. {missing[0]})")
        except UserWarning as warning:  # peft's missing-keys warning, raised by the filter above
            count = len(re.findall(r"'[^']+'", str(warning)))
            problem = f"its weights lack {count} of the LoRA tensors its configuration adds to this model"
        except (ValueError, KeyError, RuntimeError, TypeError) as error:  # peft's errors for another model
            problem = f"{type(error).__name__}: {str(error)[:200].rstrip('.')}"
        if first:
            _remove_adapter_layers(self.model)
        elif name in getattr(self.model, "peft_config", {}):
            self.model.delete_adapter(name)
        return problem

    def set_adapter(self, name: str | None) -> None:
        """Make adapter ``name`` active, or use the base model with ``None``."""
        if name is not None and name not in self._adapters:
            raise AstroVLMError(f"No adapter named {name!r}; loaded: {', '.join(self._adapters) or 'none'}.")
        self.adapter = name
        if name is not None:
            self.model.set_adapter(name)

    def trained_record(self) -> dict | None:
        return self._records.get(self.adapter)  # key None: the fine-tuned model itself

    def disable_adapter(self) -> None:
        """Use the base model (adapters stay loaded and can be switched back on)."""
        self.set_adapter(None)

    @contextlib.contextmanager
    def _active(self, adapter=...):
        previous = self.adapter
        if adapter is not ...:
            self.set_adapter(adapter)
        try:
            if self.adapter is None and self._adapters:
                with self.model.disable_adapter():
                    yield
            else:
                yield
        finally:
            if adapter is not ...:
                self.set_adapter(previous)

    # ------------------------------------------------------------------ inputs
    def _control_tokens(self) -> list[str]:
        """The tokenizer's special and added tokens (and the processor's image token), longest first.

        Added tokens that are not special count only when they look like markup (``<...>``,
        ``[...]``): some tokenizers add plain whitespace or word pieces, which text may hold.
        """
        if getattr(self, "_control_token_list", None) is None:
            tokenizer = self.tokenizer
            tokens = set(getattr(tokenizer, "all_special_tokens", None) or ())
            for added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
                content = str(getattr(added, "content", added))
                markup = content.strip()[:1] + content.strip()[-1:] in ("<>", "[]")
                if getattr(added, "special", False) or (markup and len(content.strip()) >= 3):
                    tokens.add(content)
            for attribute in ("image_token", "video_token", "boi_token", "eoi_token"):
                token = getattr(self.processor, attribute, None)
                if isinstance(token, str):
                    tokens.add(token)
            self._control_token_list = sorted((t for t in tokens if t.strip()), key=len, reverse=True)
        return self._control_token_list

    def _refuse_control_tokens(self, texts: Sequence[tuple[str, str, str]]) -> None:
        """Raise before any model work if a text holds a control token, which the processor would parse.

        ``texts`` holds ``(what, text, fix)``, e.g. ``("The label '<image>'", "<image>", "rename it")``.
        """
        tokens = self._control_tokens()
        for what, text, fix in texts:
            for token in tokens:
                if token in text:
                    raise AstroVLMError(f"{what} contains {token!r}, a control token of {self.name} that "
                                        "marks the chat or image structure; the model would not read it as "
                                        f"text. {fix}")

    def _conversation(self, prompt: str, answer: str | None = None) -> list[dict]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return messages

    def prompt_text(self, prompt: str) -> str:
        """The chat-templated prompt up to the assistant's turn."""
        return self.processor.apply_chat_template(self._conversation(prompt), add_generation_prompt=True)

    def _encode(self, images: Sequence[ModelImage], prompt_text: str, padding: bool = False) -> dict:
        inputs = None
        if self.preprocess_workers > 1 and len(images) > 1:
            inputs = self._encode_in_parallel(images, prompt_text)
        if inputs is None:
            inputs = self.processor(text=[prompt_text] * len(images), images=[[m.image] for m in images],
                                    return_tensors="pt", padding=padding, **self.processor_kwargs)
        return self._to_device(inputs)

    def _encode_in_parallel(self, images: Sequence[ModelImage], prompt_text: str) -> dict | None:
        """The processor on each image in a thread pool, stacked: the same tensors as one batch call.

        Returns `None` (the caller then makes one batch call) when the images encode to different
        lengths or shapes, which only padding could line up.
        """
        import torch
        from concurrent.futures import ThreadPoolExecutor

        def one(image):
            return self.processor(text=[prompt_text], images=[[image.image]], return_tensors="pt",
                                  **self.processor_kwargs)

        # The first call, on this thread, leaves the tokenizer's padding and truncation state as every
        # later call wants it, so that the threads only read it (concurrent changes would raise).
        first = one(images[0])
        if self._pool is None or self._pool[0] != self.preprocess_workers:
            if self._pool is not None:
                self._pool[1].shutdown(wait=False)
            self._pool = (self.preprocess_workers,
                          ThreadPoolExecutor(self.preprocess_workers, thread_name_prefix="astrovlm-preprocess"))
        parts = [first, *self._pool[1].map(one, images[1:])]
        merged = {}
        for key, value in first.items():
            values = [part[key] for part in parts]
            if not all(isinstance(v, torch.Tensor) and v.shape == value.shape for v in values):
                return None
            merged[key] = torch.cat(values)
        return merged

    def _to_device(self, inputs) -> dict:
        import torch

        moved = {}
        for key, value in dict(inputs).items():
            if isinstance(value, torch.Tensor):
                value = value.to(self.model.device)
                if value.is_floating_point():
                    value = value.to(self.dtype)
            moved[key] = value
        return moved

    def image_token_count(self, inputs: dict) -> int:
        """Image tokens per cutout in encoded inputs (prompt tokens that are image placeholders)."""
        image_token_id = getattr(self.model.config, "image_token_id", None)
        if image_token_id is None:
            image_token_id = getattr(self.model.config, "image_token_index", None)
        if image_token_id is None:
            return -1
        return int((inputs["input_ids"][0] == image_token_id).sum())

    def label_continuations(self, label_set: LabelSet) -> list[list[int]]:
        """Token ids of each label as a complete assistant answer (through the end-of-turn token)."""
        key = (label_set.labels, label_set.prompt())
        if key not in self._continuation_cache:
            prefix = self.prompt_text(label_set.prompt())
            prefix_ids = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            continuations = []
            for label in label_set.labels:
                full = self.processor.apply_chat_template(self._conversation(label_set.prompt(), label))
                if full.startswith(prefix):
                    text = full[len(prefix):].rstrip()
                else:  # templates that rewrite earlier turns: the label and the end-of-sequence token
                    text = " " + label + (self.tokenizer.eos_token or "")
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                if not ids:
                    raise AstroVLMError(f"The label {label!r} encodes to no tokens for this model.")
                ids += self._answer_end(ids)
                continuations.append(ids)
            if len({tuple(c) for c in continuations}) != len(continuations):
                raise AstroVLMError(f"Labels {list(label_set.labels)} are not distinguishable after tokenization.")
            log.debug("Prefix %d text tokens; label continuations %s", len(prefix_ids), continuations)
            self._continuation_cache[key] = continuations
        return self._continuation_cache[key]

    def _answer_end(self, ids: list[int]) -> list[int]:
        """The end-of-sequence token, for chat templates that end an answer without a special token
        (LLaVA-1.5's ends it with a space): a label is then still scored as a whole answer."""
        eos = self.tokenizer.eos_token_id
        special = set(getattr(self.tokenizer, "all_special_ids", None) or ())
        return [eos] if eos is not None and ids[-1] not in special else []

    # ------------------------------------------------------------------ batching
    def _run_batches(self, images: Sequence[ModelImage], run_batch, progress, cancel, what: str) -> list:
        """Run ``run_batch(batch) -> list`` over ``images`` with OOM back-off, progress and cancellation."""
        import torch

        results: list = []
        total = len(images)
        batch_size = max(1, self.batch_size)
        start = 0
        began = time.perf_counter()
        while start < total:
            if cancel is not None and cancel.is_set():
                raise OperationCancelled(results)
            batch = images[start:start + batch_size]
            try:
                results.extend(run_batch(batch))
            except KeyboardInterrupt as interrupt:  # Ctrl-C in a script: the finished results go with it
                interrupt.results = list(results)
                raise
            except Exception as error:  # noqa: BLE001 - only OOM is retried
                if not _is_oom(error):
                    raise
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                if batch_size == 1:
                    raise AstroVLMError(f"Out of memory on {self.device} even with one image per batch; use a "
                                        "smaller model, --dtype bfloat16, or --device cpu.") from error
                batch_size = max(1, batch_size // 2)
                self.batch_size = batch_size
                log.warning("Out of memory on %s: retrying with batch size %d", self.device, batch_size)
                continue
            start += len(batch)
            if progress is not None:
                progress(len(results), total)
        elapsed = time.perf_counter() - began
        log.info("%s %d image(s) in %.2f s (%.2f images/s) on %s/%s, batch %d, %s image tokens/cutout",
                 what, total, elapsed, total / max(elapsed, 1e-9), self.device, str(self.dtype).replace("torch.", ""),
                 batch_size, self.last_image_tokens)
        return results

    # ------------------------------------------------------------------ tasks
    def ask(self, images, question: str, *, adapter=..., **kwargs):
        with self._active(adapter):
            return super().ask(images, question, **kwargs)

    def describe(self, images, *, adapter=..., **kwargs):
        with self._active(adapter):
            return super().describe(images, **kwargs)

    def converse(self, conversation, question: str, *, adapter=..., **kwargs):
        """As `VLM.converse`; the image is encoded once per conversation (see `conversing.local_turn`)."""
        with self._active(adapter):
            return super().converse(conversation, question, **kwargs)

    def _converse(self, conversation, question, max_new_tokens):
        from .conversing import local_turn

        self._refuse_control_tokens([("The question", question, "Remove it: the image is sent separately.")])
        return local_turn(self, conversation, question, max_new_tokens)

    def classify(self, images, labels=None, *, adapter=..., **kwargs):
        """As `VLM.classify`; ``adapter`` picks a loaded adapter (or `None` for the base model) for this call."""
        with self._active(adapter):
            return super().classify(images, labels, **kwargs)

    def _classify(self, images, label_set: LabelSet, progress, cancel):
        self._refuse_control_tokens(
            [(f"The label {label!r}", label, "Rename the label (without the markup).")
             for label in label_set.labels]
            + [(f"The description of label {label!r}", description, "Reword the description.")
               for label, description in zip(label_set.labels, label_set.descriptions)]
            + [("The question", label_set.question, "Remove it: the image is sent separately.")])
        continuations = self.label_continuations(label_set)
        prompt_text = self.prompt_text(label_set.prompt())
        pad_id = self.tokenizer.pad_token_id

        def run_batch(batch):
            inputs = self._encode(batch, prompt_text)
            self.last_image_tokens = self.image_token_count(inputs)
            if "attention_mask" in inputs and not bool(inputs["attention_mask"].all()):
                groups = [[m] for m in batch]  # unequal prefix lengths: score one by one
            else:
                groups = [batch]
            out = []
            for group in groups:
                enc = inputs if len(groups) == 1 else self._encode(group, prompt_text)
                scores = score_labels_cached(self.model, enc, continuations, pad_id)
                probs = scores.float().softmax(dim=-1).cpu().numpy()
                out += [classification_result(m, label_set, p, self.name, self.adapter, self.last_image_tokens)
                        for m, p in zip(group, probs)]
            return out

        return self._run_batches(images, run_batch, progress, cancel, "Classified")

    def _generate(self, images, prompt, task, max_new_tokens, progress, cancel):
        import torch

        what = "The question" if task == "ask" else "The describe prompt"
        self._refuse_control_tokens([(what, prompt, "Remove it: the image is sent separately.")])
        prompt_text = self.prompt_text(prompt)
        self.tokenizer.padding_side = "left"

        def run_batch(batch):
            inputs = self._encode(batch, prompt_text, padding=True)
            self.last_image_tokens = self.image_token_count(inputs)
            with torch.inference_mode():
                output = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                             pad_token_id=self.tokenizer.pad_token_id)
            new_tokens = output[:, inputs["input_ids"].shape[1]:]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            return [text_result(m, task, prompt, t, self.name, self.adapter, self.last_image_tokens)
                    for m, t in zip(batch, texts)]

        return self._run_batches(images, run_batch, progress, cancel, "Answered")

    def close(self) -> None:
        import gc

        import torch

        self.model = None
        if self._pool is not None:
            self._pool[1].shutdown(wait=False)
            self._pool = None
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
