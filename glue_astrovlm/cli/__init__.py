"""The ``astrovlm`` command line: classify, ask about and describe astronomical images; evaluate and
fine-tune models on labelled images.

``classify``, ``ask`` and ``describe`` read an image (FITS, compressed FITS, PNG/JPEG, or three FITS bands
as ``R,G,B``), cut it into model images (whole image, a position, regions, a catalogue, or detected
sources), run a local or remote model and write an ECSV/FITS table and a DS9/CRTF region file. User
errors print one line saying what to do and exit with status 2; Ctrl-C and SIGTERM keep finished
results. ``eval`` writes a report comparing models and adapters on labelled images; ``finetune`` trains
a LoRA adapter (or a projector, or the whole model) on them.

The package: `parser` (the options), `run` (classify/ask/describe), `survey` (survey catalogues, locally
or on Ray), `evaluate` and `finetune`.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from ..errors import AstroVLMError
from .parser import build_parser

__all__ = ["main", "build_parser"]


_QUIET_ENVIRONMENT = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error",
                      "TOKENIZERS_PARALLELISM": "false"}


def _quiet_libraries() -> dict:
    """A normal run prints the project's own progress and results only: the libraries' progress bars,
    log chatter and deprecation warnings appear with -v. Returns the environment to restore."""
    previous = {name: os.environ.get(name) for name in _QUIET_ENVIRONMENT}
    for name, value in _QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    if "transformers" in sys.modules:  # imported already (e.g. main() called from Python)
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    return previous


def _restore(environment: dict) -> None:
    """Put back the environment `_quiet_libraries` changed (main() may run inside a longer process)."""
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


#: What each preset's ``data`` means, for `astrovlm presets`.
_DATA = {"radio": "radio continuum images (e.g. FIRST, EMU, LoTSS; Jy/beam)",
         "optical colour": "optical colour composites (e.g. SDSS, DECaLS gri/grz)",
         "optical": "optical images, one band or colour"}


def _command_presets() -> int:
    from ..labelsets import list_describe_presets, list_presets

    for preset in list_presets():
        print(f"{preset.name}: {preset.title}")
        print(f"    data: {_DATA.get(preset.data, preset.data or 'any image')}")
        if preset.source:
            print(f"    source: {preset.source}")
        for label, description in zip(preset.labels, preset.descriptions):
            print(f"    {label:<26} {description}")
    for preset in list_describe_presets():
        print(f"{preset.name}: {preset.title} (astrovlm describe --preset {preset.name})")
        print(f"    data: {_DATA.get(preset.data, preset.data or 'any image')}")
        print(f"    source: {preset.source}")
        print(f"    prompt: {preset.prompt}")
    return 0


def _survey_question_not_file(args) -> None:
    """``astrovlm ask --catalog SURVEY "Is there a jet?"``: argparse gives the first word to FILE. When
    it names no file and the catalogue has a file column (a survey catalogue), it is the question."""
    from pathlib import Path

    if args.command != "ask" or not args.catalog or args.file is None:
        return
    if any(Path(part.strip()).expanduser().exists() for part in str(args.file).split(",")):
        return
    from ..catalogs import FILE_COLUMNS, find_column, read_table

    try:
        table = read_table(args.catalog, "survey catalogue")
    except AstroVLMError:
        return  # the run says what is wrong with the catalogue
    if find_column(table, FILE_COLUMNS, args.file_col) is not None:
        args.question, args.file = [args.file, *args.question], None


def _dispatch(args) -> int:
    if args.command == "presets":
        return _command_presets()
    if args.command == "eval":
        from .evaluate import command_eval

        return command_eval(args)
    if args.command == "finetune":
        from .finetune import command_finetune

        return command_finetune(args)
    _survey_question_not_file(args)
    if args.file is None or getattr(args, "engine", "local") != "local":  # a survey catalogue
        from .survey import command_survey

        return command_survey(args)
    from .run import command_run

    return command_run(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``astrovlm`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    environment = {} if verbose else _quiet_libraries()
    try:
        if hasattr(args, "adapter") and getattr(args, "model", "") is None:
            from ..models.loading import DEFAULT_MODEL
            from ..records import adapter_base_model
            from .run import adapters_from_args

            args.model = adapter_base_model(adapters_from_args(args.adapter)) or DEFAULT_MODEL
        return _dispatch(args)
    except AstroVLMError as error:
        from .run import printable

        print(f"astrovlm: error: {printable(error)}", file=sys.stderr)
        return 2
    finally:
        _restore(environment)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
