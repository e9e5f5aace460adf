"""``astrovlm classify/ask --catalog SURVEY`` without an image FILE: a survey run over every image the
catalogue names (`glue_astrovlm.survey.tag_catalog`), in this process (``--engine local``) or on Ray
(``--engine ray``). ``--out`` is a folder of shards that ``--resume`` continues; Ctrl-C or SIGTERM
stops after the current block, keeps every finished row and exits with 130 or 143.
"""

from __future__ import annotations

import sys
import threading

from ..errors import AstroVLMError

__all__ = ["command_survey"]


class _Cancel:
    """What `_StopOnSignals` stops: the survey run's cancel event."""

    def __init__(self):
        self.event = threading.Event()

    def cancel(self) -> None:
        self.event.set()


def _checked(args) -> None:
    if args.command not in ("classify", "ask"):
        raise AstroVLMError(
            f"astrovlm {args.command} needs an image FILE; survey catalogues run with classify and ask."
        )
    if args.file is not None:
        raise AstroVLMError(
            "--engine ray runs survey catalogues: leave out FILE and give --catalog with a file "
            "column naming each row's image."
        )
    if not args.catalog:
        raise AstroVLMError(
            "Give an image FILE, or --catalog TABLE with a file column naming each row's image."
        )
    if args.out is None:
        raise AstroVLMError("A survey run writes a folder of results: give --out DIR.")
    if args.regions or args.position or args.pixel or args.detect:
        raise AstroVLMError(
            "A survey catalogue sends its rows; leave out --regions, --position, --pixel and --detect."
        )


def _load_options(args) -> dict:
    from .run import adapters_from_args

    if str(args.model).startswith(("http://", "https://")):
        return {"served_model": args.served_model, "timeout": args.timeout}
    options = {
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
        "tiling": args.tiling,
        "trust_remote_code": args.trust_remote_code,
        "adapter": adapters_from_args(args.adapter),
    }
    return {name: value for name, value in options.items() if value is not None}


def _survey_question(args) -> str | None:
    """The one question of a survey ``ask`` (the command line's, or the one line of --questions)."""
    if args.command != "ask":
        return args.question
    from .run import _questions

    questions = _questions(args)
    if len(questions) > 1:
        raise AstroVLMError(
            f"A survey catalogue asks one question of every row; {len(questions)} were given. Give one "
            "question (in quotes, or one line in --questions), or run one survey per question with "
            "its own --out."
        )
    return questions[0]


def command_survey(args) -> int:
    """Run a survey catalogue; returns the exit status."""
    from ..requests import DEFAULT_SIZE
    from ..survey import tag_catalog
    from .run import _StopOnSignals, _hdu, labels_from_args, stretch_from_args

    _checked(args)
    question = _survey_question(args)
    labels = labels_from_args(args) if args.command == "classify" else None
    if args.command == "classify" and labels is None:
        raise AstroVLMError(
            "Give --labels or --preset (see `astrovlm presets`) to classify a survey catalogue."
        )
    columns = {
        role: getattr(args, f"{role}_col")
        for role in ("ra", "dec", "x", "y", "id")
        if getattr(args, f"{role}_col")
    }
    stopper = _Cancel()
    with _StopOnSignals(stopper) as stop:
        try:
            run = tag_catalog(
                args.catalog,
                args.out,
                model=str(args.model),
                task=args.command,
                labels=labels,
                question=question,
                max_new_tokens=getattr(args, "max_new_tokens", 128),
                engine=args.engine,
                ray_address=args.ray_address,
                actors=args.actors,
                size=args.size or DEFAULT_SIZE,
                stretch=stretch_from_args(args),
                hdu=_hdu(args.hdu),
                columns=columns,
                file_col=args.file_col,
                load_options=_load_options(args),
                block_rows=args.block_rows,
                shard_rows=args.shard_rows,
                table_format=args.table_format,
                region_format=args.region_format,
                overwrite=args.overwrite,
                resume=args.resume,
                cancel=stopper.event,
            )
        except KeyboardInterrupt:
            print(
                f"partial: stopped at once; the finished shards are kept in {args.out}, continue with "
                "--resume.",
                file=sys.stderr,
            )
            return stop.exit_status
    for path in run.written:
        print(f"wrote {path}", file=sys.stderr)
    print(run.summary(), file=sys.stderr)  # an unfinished run's summary says "partial" itself
    if stop.received is not None:
        return stop.exit_status
    if run.all_failed:
        print(
            f"astrovlm: error: every row of the catalogue failed, so no table of results was written; "
            f"the reason for each row is in {run.failed_path}",
            file=sys.stderr,
        )
        return 2
    return 0 if run.complete else 2
