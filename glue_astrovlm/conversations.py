"""Conversations about a cutout: follow-up questions sent with the earlier turns, kept as training data.

A `Conversation` holds one or several cutouts and the turns asked about them. Each new question is
sent with every earlier turn through the model's chat template, so that "Which side is brighter?"
after "Is there a jet?" keeps its context. A local model keeps the attention cache of the
conversation so far, so that the image is encoded once per conversation, not once per turn; a remote
server is sent the earlier turns in the ``messages`` list. A conversation longer than the model's
context is refused with a message saying so; it is never silently cut.

An astronomer can correct an answer (`Conversation.correct`); later turns are asked with the
corrected answer, and `write_llava_json` exports the corrected dialogue as the LLaVA-style JSON that
``astrovlm finetune`` reads (`glue_astrovlm.datasets.load_llava_json`).

Examples
--------
>>> conversation = Conversation(cutout)                         # doctest: +SKIP
>>> conversation.ask(vlm, "Is there a jet?")                    # doctest: +SKIP
>>> conversation.ask(vlm, "Which side is brighter?")            # doctest: +SKIP
>>> conversation.correct(2, "The northern lobe is brighter.")   # doctest: +SKIP
>>> write_llava_json([conversation], "corrected/train.json")    # doctest: +SKIP
"""

from __future__ import annotations

import base64
import io
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import AstroVLMError
from .results import Result, atomic_write

__all__ = ["Turn", "Conversation", "converse_each", "write_llava_json", "read_questions"]


@dataclass
class Turn:
    """One question and its answer.

    Attributes
    ----------
    question : str
    answer : str
        What the model said.
    corrected : str or None
        The astronomer's correction, if any; later turns and exports use it instead of ``answer``.
    result : Result or None
        The model's result of this turn (model, adapter, prompt hash, time).
    """

    question: str
    answer: str
    corrected: str | None = None
    result: Result | None = None

    @property
    def final_answer(self) -> str:
        """The corrected answer where there is one, else the model's."""
        return self.corrected if self.corrected is not None else self.answer


#: What a saved conversation keeps of each turn's result (the provenance is the conversation's).
_RESULT_FIELDS = (
    "task",
    "answer",
    "prompt",
    "prompt_hash",
    "model",
    "adapter",
    "stretch",
    "image_tokens",
    "time",
    "turn",
)


def _result_dict(result: Result) -> dict:
    return {name: getattr(result, name) for name in _RESULT_FIELDS}


def _png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_from_png(text: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


class Conversation:
    """A dialogue with a model about one cutout (or several shown together).

    Parameters
    ----------
    images : Cutout, array, PIL image or a sequence of them
        What the conversation is about; all of them go with the first question.
    title : str, optional
        What the front ends show (a subset's name, a source id); defaults to the first cutout's source id.

    Attributes
    ----------
    turns : list of Turn
    id : str
        A stable identifier, kept in session files and exports.
    """

    def __init__(self, images, *, title: str | None = None):
        from .models.base import as_model_images

        self.images = as_model_images(images)
        first = self.images[0].provenance
        self.title = title if title is not None else (first.source_id if first is not None else "") or ""
        self.turns: list[Turn] = []
        self.id = uuid.uuid4().hex[:12]
        #: Set when the astronomer starts a new conversation about the same cutout: kept, not continued.
        self.closed = False
        #: What a backend keeps between turns (a local model's attention cache); never saved.
        self.backend_state: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.turns)

    def __repr__(self) -> str:
        return f"<Conversation {self.title!r}: {len(self.turns)} turn(s) about {len(self.images)} image(s)>"

    # ------------------------------------------------------------------ asking
    def ask(self, vlm, question: str, *, max_new_tokens: int = 128, adapter=...) -> Result:
        """Ask ``question`` with every earlier turn; the answer becomes the next turn.

        Parameters
        ----------
        vlm : VLM
            A local or remote model (`glue_astrovlm.load_model`).
        question : str
        max_new_tokens : int, optional
        adapter : str or None, optional
            For a local model with adapters: the adapter to answer with (`None`: the base model).

        Returns
        -------
        Result
            ``task='ask'``, with ``turn`` the 1-based number of this turn.

        Raises
        ------
        AstroVLMError
            If the question is blank, or the conversation with this question and ``max_new_tokens``
            would not fit the model's context (start a new conversation then).
        """
        return vlm.converse(self, question, max_new_tokens=max_new_tokens, adapter=adapter)

    def add_turn(self, question: str, result: Result) -> Result:
        """Record a finished turn (backends call this); returns ``result`` with its turn number."""
        result.turn = len(self.turns) + 1
        self.turns.append(Turn(question, result.answer, result=result))
        return result

    def messages(self, question: str | None = None, *, image_parts=None) -> list[dict]:
        """The chat messages of the conversation, the images with the first question.

        ``question`` is added as the last user turn. ``image_parts`` replaces the ``{"type": "image"}``
        placeholders (a remote server gets the pictures themselves).
        """
        parts = image_parts if image_parts is not None else [{"type": "image"} for _ in self.images]
        questions = [turn.question for turn in self.turns] + ([question] if question is not None else [])
        messages = []
        for index, text in enumerate(questions):
            content = [{"type": "text", "text": text}]
            if index == 0:
                content = list(parts) + content
            messages.append({"role": "user", "content": content})
            if index < len(self.turns):
                messages.append(
                    {
                        "role": "assistant",
                        "content": [{"type": "text", "text": self.turns[index].final_answer}],
                    }
                )
        return messages

    def turn(self, turn: int) -> Turn:
        """Turn number ``turn``, counted from 1 like `Result.turn` and the table's ``turn`` column."""
        if isinstance(turn, bool) or not isinstance(turn, int) or not 1 <= turn <= len(self.turns):
            valid = f"turns are numbered 1 to {len(self.turns)}" if self.turns else "ask a question first"
            raise AstroVLMError(
                f"This conversation has {len(self.turns)} turn(s); there is no turn {turn!r} ({valid}, "
                "like Result.turn)."
            )
        return self.turns[turn - 1]

    def correct(self, turn: int, answer: str) -> None:
        """Replace the answer of turn ``turn`` by the astronomer's ``answer``.

        Turns are numbered from 1, like `Result.turn` and the table's ``turn`` column:
        ``conversation.correct(result.turn, ...)`` corrects the turn that gave ``result``. The model's
        answer is kept in ``turns[turn - 1].answer``; later questions and exports use the correction.
        """
        entry = self.turn(turn)
        if not isinstance(answer, str) or not answer.strip():
            raise AstroVLMError(
                "A corrected answer must be text; leave the turn as it is to keep the model's."
            )
        entry.corrected = answer.strip()

    def results(self) -> list[Result]:
        """The results of every turn, in order."""
        return [turn.result for turn in self.turns if turn.result is not None]

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict:
        """Plain data (JSON-safe): the pictures as PNG, the turns, corrections and what answered."""
        return {
            "id": self.id,
            "title": self.title,
            "closed": self.closed,
            "images": [
                {
                    "png": _png(m.image),
                    "stretch": m.stretch,
                    "provenance": None if m.provenance is None else m.provenance.source_id,
                }
                for m in self.images
            ],
            "turns": [
                {
                    "question": t.question,
                    "answer": t.answer,
                    "corrected": t.corrected,
                    "result": None if t.result is None else _result_dict(t.result),
                }
                for t in self.turns
            ],
        }

    @classmethod
    def from_dict(cls, data: dict, provenances: Sequence | None = None) -> "Conversation":
        """A conversation from `to_dict`'s data; ``provenances`` gives back the cutouts' provenance."""
        from .models.base import ModelImage

        try:
            images = [_image_from_png(entry["png"]) for entry in data["images"]]
            conversation = cls(images, title=data.get("title", ""))
            conversation.images = [
                ModelImage(image, provenances[i] if provenances else None, entry.get("stretch", "as given"))
                for i, (image, entry) in enumerate(zip(images, data["images"]))
            ]
            conversation.id = str(data.get("id", conversation.id))
            conversation.closed = bool(data.get("closed", False))
            for entry in data["turns"]:
                result = entry.get("result")
                if result:
                    first = conversation.images[0].provenance
                    result = Result(provenance=first, **{k: result[k] for k in _RESULT_FIELDS if k in result})
                conversation.turns.append(
                    Turn(entry["question"], entry["answer"], entry.get("corrected"), result)
                )
        except (KeyError, TypeError, ValueError) as error:
            raise AstroVLMError(
                f"A saved conversation is damaged ({type(error).__name__}: {error})."
            ) from None
        return conversation

    def to_llava(self, image_file: str | Sequence[str], *, only_corrected: bool = False) -> dict:
        """The LLaVA-style entry of this conversation (corrected answers), naming ``image_file``.

        Each gpt turn says whether an astronomer corrected it (``"corrected": true`` or ``false``; a key
        that training ignores and ``astrovlm eval`` reads). ``only_corrected`` keeps only the corrected
        turns (a later question then loses the dropped turns as context).
        """
        turns = [t for t in self.turns if t.corrected is not None] if only_corrected else self.turns
        if not turns:
            what = "no corrected turn to export" if self.turns else "no turn to export; ask a question first"
            raise AstroVLMError(f"The conversation {self.title!r} has {what}.")
        lines = []
        for index, turn in enumerate(turns):
            question = ("<image>\n" * len(self.images) + turn.question) if index == 0 else turn.question
            lines += [
                {"from": "human", "value": question},
                {"from": "gpt", "value": turn.final_answer, "corrected": turn.corrected is not None},
            ]
        image = image_file if isinstance(image_file, str) or len(image_file) != 1 else image_file[0]
        return {
            "id": self.id,
            "image": image if isinstance(image, str) else list(image),
            "conversations": lines,
        }


def converse_each(
    vlm, images, questions: Sequence[str], *, max_new_tokens: int = 128, progress=None, cancel=None
) -> list[Result]:
    """One conversation of ``questions`` about each image; every turn a `Result` (``turn`` 1, 2, ...).

    A conversation is the unit of work: ``progress(done, total)`` counts images whose conversation
    finished, ``cancel`` stops between images (`OperationCancelled` carries the finished turns), and
    an error carries, as its ``results``, the turns of the conversations that finished before it and
    the turns already answered in the conversation it stopped (a turn over the model's context:
    `~glue_astrovlm.models.conversing.ContextTooLong`, which says which turn).
    """
    from .models.base import OperationCancelled, as_model_images
    from .models.conversing import ContextTooLong

    model_images = as_model_images(images)
    results: list[Result] = []
    for done, model_image in enumerate(model_images):
        if cancel is not None and cancel.is_set():
            raise OperationCancelled(results)
        conversation = Conversation([model_image.image])
        conversation.images = [model_image]
        try:
            for question in questions:
                conversation.ask(vlm, question, max_new_tokens=max_new_tokens)
        except (AstroVLMError, KeyboardInterrupt) as error:
            # a turn over the context: the turns answered before it are kept (asking again cannot finish
            # this conversation); after other stops the conversation is asked again whole on --resume
            error.results = results + (conversation.results() if isinstance(error, ContextTooLong) else [])
            raise
        finally:
            conversation.backend_state.clear()
        results += conversation.results()
        if progress is not None:
            progress(done + 1, len(model_images))
    return results


def write_llava_json(
    conversations: Sequence[Conversation],
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    only_corrected: bool = False,
) -> Path:
    """Export conversations as LLaVA-style JSON with their pictures, ready for ``astrovlm finetune``.

    The pictures the model saw are written as PNG files into ``images/`` beside ``path``; answers are
    the corrected ones where an astronomer corrected them, and each answer says which it is
    (``"corrected": true`` or ``false``, ignored by training): ``astrovlm eval`` on such a file
    counts the references that are the model's own uncorrected answers.

    Parameters
    ----------
    conversations : sequence of Conversation
    path : path-like
        The JSON file to write.
    overwrite : bool, optional
        Replace an existing file (the default refuses).
    only_corrected : bool, optional
        Keep only the turns an astronomer corrected (conversations without one are left out), so
        that no reference or training target is the model's own answer.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    if only_corrected:
        conversations = [c for c in conversations if any(t.corrected is not None for t in c.turns)]
        if not conversations:
            raise AstroVLMError("No conversation has a corrected turn to export; correct an answer first, "
                                "or export without only_corrected.")
    conversations = [c for c in conversations if c.turns]
    if not conversations:
        raise AstroVLMError("No conversation has a turn to export; ask a question first.")
    path = Path(path).expanduser()
    if path.exists() and not overwrite:
        raise AstroVLMError(f"{path} exists; choose another file or pass overwrite=True.")
    folder = path.parent / "images"
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for conversation in conversations:
        names = []
        for index, model_image in enumerate(conversation.images):
            name = f"images/{conversation.id}-{index}.png"
            model_image.image.save(path.parent / name)
            names.append(name)
        entries.append(conversation.to_llava(names, only_corrected=only_corrected))
    text = json.dumps(entries, indent=1)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite)


def read_questions(path: str | os.PathLike) -> list[str]:
    """Questions from a text file, one a line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path).expanduser()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise AstroVLMError(f"Cannot read the questions file {path}: {error.strerror or error}.") from None
    questions = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not questions:
        raise AstroVLMError(f"{path} holds no question; write one question a line.")
    return questions
