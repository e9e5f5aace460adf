"""An LLM judge: a second model grades each answer against the reference with a written rubric.

The judge sees the image, the question, the reference answer and the candidate's answer, and gives
one of `VERDICTS` (scored 1, 0.5 and 0). Two ways to ask it:

- ``method='score'`` (default): the verdicts are scored as a label set with the judge's own
  `VLM.classify` (local models score the three continuations; servers use /v1/systemone or
  log-probabilities). The raw verdict is the probability of each verdict, and the judge cannot
  answer outside the rubric.
- ``method='generate'``: the judge writes its verdict; `parse_verdict` reads it, and an answer
  outside the rubric raises `JudgeOutsideRubric` naming the judge, the question and what it said.

A written verdict (``generate``) is asked three times: twice as asked (``repeat`` 0 and 1) and once
with the reference and the answer in the other order. A scored verdict is deterministic (the same
prompt always gets the same probabilities), so asking twice would agree by construction: it is
asked as given and in the other order only. `agreement` reports how often the verdicts agree, the
judge's reliability. The rubric's hash (`rubric_hash`) is saved with every verdict.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .errors import AstroVLMError

__all__ = [
    "VERDICTS",
    "VERDICT_SCORES",
    "JUDGE_METHODS",
    "RUBRIC",
    "JudgeOutsideRubric",
    "Judge",
    "Verdict",
    "parse_verdict",
    "rubric_hash",
    "rubric_prompt",
    "agreement",
    "same_model",
]

VERDICTS = ("correct", "partially correct", "wrong")
VERDICT_SCORES = {"correct": 1.0, "partially correct": 0.5, "wrong": 0.0}
JUDGE_METHODS = ("score", "generate")
#: The two orders in which the reference and the candidate's answer are shown to the judge.
ORDERS = ("reference first", "answer first")

RUBRIC = (
    "You are grading an answer to a question about this astronomical image, against a reference answer "
    "written by an astronomer.\n"
    "Question: {question}\n"
    "{first_name}: {first}\n"
    "{second_name}: {second}\n"
    "Rubric: 'correct' if the candidate answer says what the reference answer says (the wording may "
    "differ); 'partially correct' if it gets part of it right, or is vaguer than the reference; 'wrong' "
    "if it contradicts the reference, misses its point, or does not answer."
)
_DESCRIPTIONS = (
    "says what the reference says",
    "gets part of it right",
    "contradicts or misses the reference",
)
_GENERATE_SUFFIX = "\nReply with exactly one of: correct, partially correct, wrong."


class JudgeOutsideRubric(AstroVLMError):
    """The judge answered something that is not one of `VERDICTS`."""


@dataclass
class Verdict:
    """One judgement of one answer."""

    item: str
    turn: int
    system: str
    order: str
    repeat: int
    verdict: str
    score: float
    raw: object
    prompt_hash: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def rubric_hash(method: str = "score") -> str:
    """Short SHA-256 of the rubric template and the method: what every saved verdict carries."""
    text = RUBRIC + ("" if method == "score" else _GENERATE_SUFFIX) + method
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rubric_prompt(question: str, reference: str, answer: str, order: str = ORDERS[0]) -> str:
    """The rubric filled in, with the reference first or the candidate's answer first."""
    pairs = [("Reference answer", reference), ("Candidate answer", answer or "(no answer)")]
    if order == ORDERS[1]:
        pairs.reverse()
    elif order != ORDERS[0]:
        raise AstroVLMError(f"order must be one of {ORDERS}, got {order!r}.")
    return RUBRIC.format(
        question=question,
        first_name=pairs[0][0],
        first=pairs[0][1],
        second_name=pairs[1][0],
        second=pairs[1][1],
    )


def parse_verdict(text: str, *, judge: str = "the judge", where: str = "") -> str:
    """The verdict in a judge's written answer ("Partially correct: ..." gives ``'partially correct'``).

    Raises
    ------
    JudgeOutsideRubric
        If the text does not start with one of `VERDICTS` (after an optional "verdict:" and markup).
    """
    words = re.sub(r"[^a-z ]+", " ", str(text).lower()).split()
    if words[:1] == ["verdict"]:
        words = words[1:]
    start = " ".join(words[:2])
    if start.startswith("partially correct") or words[:1] == ["partial"] or words[:1] == ["partly"]:
        return "partially correct"
    if words[:1] in (["correct"], ["wrong"], ["incorrect"]):
        return "wrong" if words[0] == "incorrect" else words[0]
    shown = str(text).strip()[:120] or "(nothing)"
    raise JudgeOutsideRubric(
        f"{judge} answered {shown!r}{where}, which is outside the rubric ({', '.join(VERDICTS)}). A judge "
        "must follow the rubric: use an instruction-tuned judge model, or --judge-method score, which ranks "
        "the three verdicts instead of reading a written one."
    )


def _folder_fingerprint(folder: Path) -> str | None:
    """What identifies a model folder's weights cheaply: its config and, per weights file, the size,
    the safetensors header and 1 MiB samples at the start, middle and end of the file."""
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    config = folder / "config.json"
    if not files or not config.is_file():
        return None
    digest = hashlib.sha256(config.read_bytes())
    chunk = 1 << 20
    try:
        for file in files:
            size = file.stat().st_size
            digest.update(f"{file.name}:{size}".encode())
            with open(file, "rb") as handle:
                for start in sorted({0, max(0, size // 2 - chunk // 2), max(0, size - chunk)}):
                    handle.seek(start)
                    digest.update(handle.read(chunk))
    except OSError:
        return None
    return digest.hexdigest()


def same_model(a: str, b: str) -> bool:
    """Whether two model names (Hub ids, folders or ``name @ url``) name the same model.

    Two folders count as the same model when their config and weights files are the same bytes (a
    copy of the candidate's folder is not an independent judge)."""

    def norm(name: str) -> str:
        name = str(name).split(" @ ")[0].split(" (")[0].rstrip("/")
        path = Path(name).expanduser()
        return str(path.resolve()) if path.exists() else name.lower()

    if norm(a) == norm(b):
        return True
    paths = [Path(norm(name)) for name in (a, b)]
    if all(path.is_dir() for path in paths):
        prints = [_folder_fingerprint(path) for path in paths]
        return prints[0] is not None and prints[0] == prints[1]
    return False


class Judge:
    """A model that grades answers with the rubric.

    Parameters
    ----------
    vlm : VLM
        The judge model (`glue_astrovlm.load_model`: a Hub id, a folder or a server URL).
    method : {'score', 'generate'}
        How the verdict is obtained (see the module docstring).
    max_new_tokens : int
        Length of a written verdict (``method='generate'``).
    """

    def __init__(self, vlm, method: str = "score", max_new_tokens: int = 12):
        if method not in JUDGE_METHODS:
            raise AstroVLMError(
                f"The judge method must be one of {', '.join(JUDGE_METHODS)}, got {method!r}."
            )
        self.vlm = vlm
        self.method = method
        self.max_new_tokens = max_new_tokens
        self.name = str(getattr(vlm, "name", vlm))
        self.prompt_hash = rubric_hash(method)

    def _clean(self, text: str) -> str:
        """Text without the judge's control tokens (a candidate's answer may hold some)."""
        tokens = getattr(self.vlm, "_control_tokens", None)
        for token in tokens() if tokens is not None else ():
            text = text.replace(token, " ")
        return " ".join(text.split()) if "\n" not in text else text

    def judge(
        self, image, question: str, reference: str, answer: str, order: str = ORDERS[0], where: str = ""
    ) -> tuple[str, object]:
        """``(verdict, raw)`` for one answer: raw is the verdicts' probabilities or the written text."""
        prompt = rubric_prompt(self._clean(question), self._clean(reference), self._clean(answer), order)
        if self.method == "generate":
            (result,) = self.vlm.ask(
                image, prompt + _GENERATE_SUFFIX, max_new_tokens=self.max_new_tokens, **self._adapter()
            )
            return parse_verdict(result.answer, judge=f"The judge {self.name}", where=where), result.answer
        from .labelsets import LabelSet

        rubric = LabelSet(VERDICTS, _DESCRIPTIONS, question=prompt, name="judge rubric")
        (result,) = self.vlm.classify(image, rubric, **self._adapter())
        return result.label, dict(result.probabilities)

    def _adapter(self) -> dict:
        return {"adapter": None} if getattr(self.vlm, "adapters", None) else {}

    @property
    def asks(self) -> tuple:
        """The ``(order, repeat)`` of each judgement of an answer: a written verdict is asked twice as
        given (its repeat check), a scored one once, as scoring is deterministic; both once swapped."""
        if self.method == "score":
            return ((ORDERS[0], 0), (ORDERS[1], 0))
        return ((ORDERS[0], 0), (ORDERS[0], 1), (ORDERS[1], 0))

    def judge_all(self, system: str, cases: Sequence[dict], progress=None) -> list[Verdict]:
        """Judge every case (``item``, ``turn``, ``image``, ``question``, ``reference``, ``answer``) as
        `asks` says: as asked (twice for a written verdict) and once with reference and answer swapped."""
        verdicts = []
        for case in cases:
            where = f" about {case['item']} turn {case['turn']}"
            for order, repeat in self.asks:
                verdict, raw = self.judge(
                    case["image"], case["question"], case["reference"], case["answer"], order, where
                )
                verdicts.append(
                    Verdict(
                        case["item"],
                        case["turn"],
                        system,
                        order,
                        repeat,
                        verdict,
                        VERDICT_SCORES[verdict],
                        raw,
                        self.prompt_hash,
                    )
                )
            if progress is not None:
                progress(1)
        return verdicts


def agreement(verdicts: Sequence[Verdict]) -> dict:
    """How often the judge agrees with itself: the same answer judged twice, and with the order swapped.

    Returns ``{"repeat": fraction, "swap": fraction, "n": answers}`` (NaN fractions without answers;
    ``repeat`` is NaN where no answer was judged twice, as with ``method='score'``).
    """
    by_case: dict[tuple, dict] = {}
    for v in verdicts:
        by_case.setdefault((v.system, v.item, v.turn), {})[(v.order, v.repeat)] = v.verdict
    first, again, swapped = (ORDERS[0], 0), (ORDERS[0], 1), (ORDERS[1], 0)
    repeat = [c[first] == c[again] for c in by_case.values() if first in c and again in c]
    swap = [c[first] == c[swapped] for c in by_case.values() if first in c and swapped in c]
    nan = float("nan")
    return {
        "repeat": sum(repeat) / len(repeat) if repeat else nan,
        "swap": sum(swap) / len(swap) if swap else nan,
        "n": len(swap),
    }
