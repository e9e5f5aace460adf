"""``astrovlm classify``, ``ask`` and ``describe``: the options become one engine `Request`, which a
`~glue_astrovlm.session.VLMSession` runs, and the results go to the terminal and to `RunOutputs`.

Nothing finished is lost: Ctrl-C or SIGTERM (what batch schedulers send) stops after the current
batch, a server that dies keeps what it answered, and either way the finished results are written,
marked partial, and the exit status says so (130, 143, 2). ``--resume`` continues such a run.
"""

from __future__ import annotations

import collections
import logging
import signal
import sys
import threading
import unicodedata
from pathlib import Path

from ..errors import AstroVLMError

__all__ = ["command_run", "request_from_args", "image_from_args", "cube_from_args", "labels_from_args",
           "adapters_from_args", "session_from_args", "printable"]

log = logging.getLogger("glue_astrovlm")

EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM = 2, 130, 143


# ----------------------------------------------------------------------------- options -> engine objects
def _hdu(text):
    return int(text) if text is not None and text.lstrip("-").isdigit() else text


def image_from_args(args):
    """The image named by FILE: one file, or three bands ``R,G,B`` as an RGB composite."""
    from ..sources import open_image, rgb_composite

    files = [f for f in args.file.split(",") if f]
    if len(files) == 3:
        return rgb_composite(*(open_image(f, hdu=_hdu(args.hdu)) for f in files))
    if len(files) == 1:
        return open_image(files[0], hdu=_hdu(args.hdu))
    raise AstroVLMError(f"Give one image, or three bands as R,G,B; got {len(files)} files.")


def cube_from_args(args, image) -> dict | None:
    """The ``reduce_cube`` arguments of --slice/--sum/--mean/--moment0 (and --spectral-axis)."""
    from .parser import parse_channel_range

    chosen = next(((mode, getattr(args, mode)) for mode in ("slice", "sum", "mean", "moment0")
                   if getattr(args, mode, None) is not None), None)
    if chosen is None:
        if getattr(image, "is_cube", False):
            raise AstroVLMError(f"{args.file} is a cube; choose a plane with --slice N, --sum A:B, --mean A:B "
                                "or --moment0 A:B.")
        return None
    mode, value = chosen
    cube = {"mode": mode}
    if mode == "slice":
        cube["index"] = value
    else:
        cube["spectral_range"] = parse_channel_range(value)
    if getattr(args, "spectral_axis", None) is not None:
        cube["spectral_axis"] = args.spectral_axis
    return cube


def _sky_position(ra: str, dec: str, frame: str):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    try:
        try:
            return SkyCoord(float(ra), float(dec), unit="deg", frame=frame)
        except ValueError:
            if frame == "galactic":
                raise
            return SkyCoord(ra, dec, unit=(u.hourangle, u.deg), frame=frame)
    except Exception as error:  # astropy raises several types for bad angles
        raise AstroVLMError(f"Could not read the position {ra} {dec}: {error}. Give degrees (150.1 2.2) or "
                            "sexagesimal (10:00:24 +02:12:00, 05h40m59s -02d27m30s).") from error


STRETCH_OPTIONS = ("interval", "stretch", "contrast", "percentile", "rgb")


def stretch_from_args(args):
    """The stretch the options ask for, or `None` when none is given (then data get the default stretch
    and rendered pictures go as they are)."""
    from ..stretch import Stretch

    given = {name: getattr(args, name) for name in STRETCH_OPTIONS if getattr(args, name, None) is not None}
    return Stretch(**given) if given else None


def _send(args) -> dict:
    """The ``send`` of the request and what it needs."""
    from ..requests import Detection

    if args.regions:
        return {"send": "regions", "regions": args.regions}
    if args.catalog:
        columns = {role: getattr(args, f"{role}_col") for role in ("ra", "dec", "x", "y", "id")
                   if getattr(args, f"{role}_col")}
        return {"send": "catalog", "catalog": args.catalog, "columns": columns, "skip_outside": args.skip_outside}
    if args.position:
        return {"send": "position", "position": _sky_position(*args.position, args.frame)}
    if args.pixel:
        return {"send": "position", "position": tuple(args.pixel)}
    if args.detect:
        return {"send": "detect", "detection": Detection(nsigma=args.nsigma, max_sources=args.max_sources,
                                                         max_pixels=args.detect_max_pixels)}
    if args.size is not None:
        log.info("--size applies to positions, catalogues, detections and region points; sending the whole image")
    return {"send": "image"}


def request_from_args(args, labels=None):
    """The engine `~glue_astrovlm.requests.Request` of a classify/ask/describe command line."""
    from ..requests import DEFAULT_SIZE, Request

    image = image_from_args(args)
    if args.command == "classify":
        task = dict(task="classify", labels=labels, question=args.question if labels is None else None)
    elif args.command == "ask":
        questions = _questions(args)
        task = dict(task="ask", question=questions[0], follow_ups=tuple(questions[1:]),
                    max_new_tokens=args.max_new_tokens)
    elif args.command == "describe" and getattr(args, "preset", None):
        from ..labelsets import load_describe_preset

        task = dict(task="describe", question=load_describe_preset(args.preset).prompt,
                    max_new_tokens=args.max_new_tokens)
    else:
        task = dict(task=args.command, max_new_tokens=args.max_new_tokens)
    size = args.size if args.size is not None else (None if args.regions else DEFAULT_SIZE)
    return Request(image=image, cube=cube_from_args(args, image), stretch=stretch_from_args(args), size=size,
                   outside=args.outside, **_send(args), **task)


def _questions(args) -> list[str]:
    """The questions of ``astrovlm ask``: the command line's, then those of --questions FILE."""
    from ..conversations import read_questions

    questions = [q for q in args.question if q.strip()]
    if args.questions:
        questions += read_questions(args.questions)
    if not questions:
        raise AstroVLMError('Give a question in quotes (astrovlm ask IMAGE "Is there a jet?"), several for a '
                            "conversation, or --questions FILE with one question a line.")
    return questions


def labels_from_args(args):
    """The label set the user asked for (--labels/--preset/--question), or None."""
    from ..labelsets import resolve_labels

    if getattr(args, "labels", None) is None and getattr(args, "preset", None) is None:
        return None
    given = args.labels
    if given and len(given) == 1 and Path(given[0]).suffix.lower() in {".toml", ".yaml", ".yml"}:
        given = given[0]
    return resolve_labels(given, args.preset, args.question)


def adapters_from_args(values) -> dict | None:
    """``--adapter [NAME=]PATH`` (repeatable) as ``{name: path}``."""
    if not values:
        return None
    adapters = {}
    for value in values:
        name, _, path = value.rpartition("=")
        adapters[name or Path(path).name] = path
    return adapters


def session_from_args(args):
    """A session with the model options of the command line (not remembered as a recent model)."""
    from ..session import VLMSession

    if str(args.model).startswith(("http://", "https://")):
        options = dict(served_model=args.served_model, timeout=args.timeout)
    else:
        options = dict(device=args.device, dtype=args.dtype, batch_size=args.batch_size, tiling=args.tiling,
                       trust_remote_code=args.trust_remote_code)
    return VLMSession(args.model, adapters_from_args(args.adapter), remember=False, **options)


def _has_finetune_record(args) -> bool:
    """Whether the first --adapter, or else the --model folder, was written by `astrovlm finetune`."""
    from ..records import read_finetune_record

    adapters = adapters_from_args(args.adapter)
    where = Path(str(next(iter(adapters.values())) if adapters else args.model)).expanduser()
    return where.is_dir() and read_finetune_record(where) is not None


# ----------------------------------------------------------------------------- running
class _StopOnSignals:
    """Ctrl-C (SIGINT) or SIGTERM: stop after the current batch, keeping what finished; again: stop now."""

    def __init__(self, session):
        self.session = session
        self.received = None
        self._previous = {}

    def _handle(self, signum, _frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        self.session.cancel()
        print(f"\n{signal.Signals(signum).name}: stopping after the current batch; finished results are kept "
              "(Ctrl-C again to stop at once).", file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def exit_status(self) -> int:
        return EXIT_SIGTERM if self.received == signal.SIGTERM else EXIT_SIGINT


def _run(session, request, cutouts):
    """Run the request on ``cutouts``: ``(results, exit status or None, error or None)``."""
    from tqdm.auto import tqdm

    from ..models.base import OperationCancelled

    with tqdm(total=len(cutouts), desc=request.task, unit="cutout", disable=len(cutouts) < 2,
              file=sys.stderr) as bar, _StopOnSignals(session) as stop:
        def progress(done, _total):
            bar.update(done - bar.n)

        try:
            return session.run(request, cutouts=cutouts, progress=progress), None, None
        except OperationCancelled as cancelled:
            return cancelled.results, stop.exit_status, None
        except KeyboardInterrupt as interrupt:
            return list(getattr(interrupt, "results", None) or []), stop.exit_status, None
        except AstroVLMError as error:
            if getattr(error, "results", None) is None:
                raise
            return list(error.results), EXIT_FAILED, error


def printable(text: str) -> str:
    """Text with control and escape characters shown as escapes, so that an answer cannot rewrite the
    terminal; line breaks are kept and indented under the first line."""
    out = []
    for char in str(text):
        if char == "\n":
            out.append("\n\t")
        elif char == "\t" or unicodedata.category(char)[0] != "C":
            out.append(char)
        else:
            out.append(repr(char)[1:-1])
    return "".join(out)


def _answer_text(result) -> str:
    """The answer as printed: an empty one as ``""``, so that it is seen."""
    return printable(result.answer) if result.answer else '""'


def _print_results(results) -> None:
    for result in results:
        where = printable(result.source_id or "-")
        if result.task == "classify":
            probs = "  ".join(f"{printable(k)}={v:.3f}" for k, v in result.probabilities.items())
            print(f"{where}\t{printable(result.label)}\t{result.confidence:.3f}\t{probs}")
        elif result.turn is not None:
            print(f"{where}\tturn {result.turn}\t{printable(result.prompt)}\t{_answer_text(result)}")
        else:
            print(f"{where}\t{_answer_text(result)}")


def _described(args, request) -> dict:
    """What the run asked, recorded in the table and compared when resuming."""
    return {"task": request.task, "labels": list(request.labels.labels) if request.labels is not None else None,
            "question": request.question,
            **({"follow_ups": list(request.follow_ups)} if request.follow_ups else {}),
            "model": str(args.model), "adapter": args.adapter or None,
            "stretch": request.stretch.describe() if request.stretch else "auto",
            "cube": str(request.cube) if request.cube else None}


def _write(outputs, results, total: int, labels, described) -> list[Path]:
    """Write through ``outputs``; if that fails, keep the results in a rescue table and say where."""
    import os
    import tempfile

    from ..results import write_table

    try:
        return outputs.write(results, total=total, labels=labels, described=described)
    except AstroVLMError as error:
        if not results:
            raise
        rescue = Path(tempfile.gettempdir()) / f"astrovlm-rescue-{os.getpid()}.ecsv"
        write_table(results, rescue, overwrite=True)
        raise AstroVLMError(f"{error} The {len(results)} finished result(s) were saved to {rescue} instead.") \
            from None


def _context_advice(error, turns: int, kept: int) -> str:
    """The CLI's words for a turn over the model's context: which turn, what was kept, which options help."""
    question = error.question if len(error.question) <= 60 else error.question[:57] + "..."
    if error.length is not None and error.limit is not None:
        size = f"{error.length} prompt tokens for a model that reads {error.limit}"
        if not error.prompt_alone:
            size += f", with up to {error.max_new_tokens} (--max-new-tokens) for the answer"
    else:
        size = "refused by the server as too long"
    shorter = "" if error.prompt_alone else ", or a smaller --max-new-tokens"
    kept_text = f"The {kept} turn(s) answered before it are kept in the table. " if kept else ""
    return (f"Turn {error.turn} of {turns} ({question!r}) did not fit the model's context ({size}); "
            f"nothing was cut. {kept_text}Ask fewer or shorter questions{shorter}.")


def command_run(args) -> int:
    """``astrovlm classify/ask/describe``; returns the exit status."""
    from ..models.conversing import ContextTooLong
    from ..outputs import RunOutputs
    from ..results import empty_answers_note, result_key

    labels = labels_from_args(args) if args.command == "classify" else None  # checked before any work
    if args.command == "classify" and labels is None and not _has_finetune_record(args):
        raise AstroVLMError("Give --labels or --preset (see `astrovlm presets`). Only a model or adapter made by "
                            "`astrovlm finetune` brings its own labels.")
    outputs = None
    if args.out is not None:
        outputs = RunOutputs(args.out, table_format=args.table_format, region_format=args.region_format,
                             overwrite=args.overwrite, resume=args.resume).reserve()
    elif args.resume:
        raise AstroVLMError("--resume continues the run written to --out; give that --out.")
    try:
        request = request_from_args(args, labels)
        described = _described(args, request)
        if outputs is not None:
            outputs.check_same_request(described)
        session = session_from_args(args)
        prepared = session.prepare(request)
        done = outputs.done_keys if outputs is not None else set()
        todo = [c for c in prepared.cutouts if result_key(c.provenance) not in done]
        log.info("%d cutout(s) from %s, %d still to do", len(prepared.cutouts), args.file, len(todo))
        results, status, error = _run(session, request, todo)
        turns = 1 + len(request.follow_ups)  # rows per cutout
        _print_results(results)
        written = []
        if outputs is not None:
            written = _write(outputs, results, len(prepared.cutouts) * turns,
                             labels.labels if labels else None, described)
        for path in written:
            print(f"wrote {path}", file=sys.stderr)
        note = empty_answers_note(results)
        if note:
            print(f"note: {note}", file=sys.stderr)
        counts = collections.Counter(result_key(r.provenance) for r in results)
        complete = sum(n for n in counts.values() if n >= turns)  # rows of cutouts whose conversation ended
        if status is not None:
            finished = sum(1 for n in counts.values() if n >= turns) + len(
                done & {result_key(c.provenance) for c in prepared.cutouts})
            again = "" if isinstance(error, ContextTooLong) else ", continue with --resume"
            where = f"; written to {written[0]} (marked partial){again}" if written else ""
            print(f"partial: {finished} of {len(prepared.cutouts)} cutouts done{where}.", file=sys.stderr)
        if isinstance(error, ContextTooLong):
            raise AstroVLMError(_context_advice(error, turns, len(results) - complete)) from None
        if error is not None:
            raise error
        return status or 0
    finally:
        if outputs is not None:
            outputs.release()
