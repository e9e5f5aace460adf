"""The ``astrovlm`` argument parser: every choice list comes from the engine's registries, and the
fine-tuning defaults from `~glue_astrovlm.training.FinetuneConfig`, so the command line offers exactly
what the engine and the panels do."""

from __future__ import annotations

import argparse
import dataclasses
import re

from ..cutout_types import OUTSIDE_MODES
from ..detect import DETECT_MAX_PIXELS
from ..errors import AstroVLMError
from ..models.image_tokens import TILING_CHOICES
from ..requests import DEFAULT_SIZE
from ..results import REGION_FORMATS, TABLE_FORMATS
from ..stretch import DEFAULT_STRETCH, INTERVALS, RGB_MODES, STRETCHES

__all__ = ["build_parser", "FINETUNE_OPTIONS", "parse_size", "parse_channel_range"]

DESCRIPTION = ("The astrovlm command line: classify, ask about and describe astronomical images; evaluate and "
               "fine-tune models on labelled images.")


class _Parser(argparse.ArgumentParser):
    """argparse, with values such as ``-02:27:30`` (a southern declination) and ``-1:5km/s`` (a
    spectral range) read as values: argparse otherwise takes any word that starts with '-' and is not a
    plain number for an option."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")


# ----------------------------------------------------------------------------- value types
def parse_size(text: str):
    """``64`` (pixels), ``64,32`` (ny,nx pixels) or an angle such as ``30arcsec``/``1.5arcmin``."""
    import astropy.units as u

    text = text.strip()
    try:
        values = [int(v) for v in text.split(",")] if "," in text else [int(text)]
    except ValueError:
        values = None
    if values is not None:
        if len(values) > 2 or min(values) < 1:
            raise argparse.ArgumentTypeError(f"size {text!r} must be one or two positive numbers of pixels")
        return tuple(values) if len(values) == 2 else values[0]
    try:
        quantity = u.Quantity(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"size {text!r} is neither pixels (64) nor an angle (30arcsec)")
    if quantity.unit.physical_type != "angle" or not quantity.value > 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be a positive number of pixels or an angle")
    return quantity


def parse_channel_range(text: str):
    """``3:9`` (channels, start inclusive, stop exclusive) or ``-1.5:3km/s`` (spectral values)."""
    import astropy.units as u

    try:
        start, stop = text.split(":")
    except ValueError:
        raise AstroVLMError(f"Spectral range {text!r} must look like 3:9 (channels) or -1.5:3km/s.") from None
    try:
        return int(start), int(stop)
    except ValueError:
        pass
    try:
        stop_q = u.Quantity(stop)
        bare = start.strip().lstrip("-+").replace(".", "", 1).isdigit()
        start_q = u.Quantity(float(start), stop_q.unit) if bare else u.Quantity(start)
    except (TypeError, ValueError) as error:
        raise AstroVLMError(f"Could not read spectral range {text!r}: {error}") from None
    return start_q, stop_q


def _number(kind, minimum, what: str):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < minimum or value != value:
            raise argparse.ArgumentTypeError(f"{text} is not {what}")
        return value

    return parse


positive_int = _number(int, 1, "a positive whole number")
non_negative_int = _number(int, 0, "a whole number of 0 or more")
positive_float = _number(float, 1e-300, "a positive number")


# ----------------------------------------------------------------------------- classify / ask / describe
def _add_what_to_send(parser) -> None:
    where = parser.add_argument_group("what to send (default: the whole image)").add_mutually_exclusive_group()
    where.add_argument("--regions", metavar="REG", help="DS9/CRTF region file: one cutout per shape (a point gets "
                                                        "a --size box)")
    where.add_argument("--catalog", metavar="TABLE", help="table (ECSV, FITS, CSV, VOTable) of ra/dec or x/y")
    where.add_argument("--position", nargs=2, metavar=("RA", "DEC"),
                       help="sky position, degrees (150.1 2.2) or sexagesimal (05:40:59 -02:27:30)")
    where.add_argument("--pixel", nargs=2, type=float, metavar=("X", "Y"),
                       help="pixel position, 0-based as in astropy (ds9 shows 1-based)")
    where.add_argument("--detect", action="store_true", help="find sources with photutils and send each one")
    parser.add_argument("--frame", default="icrs", help="frame of --position (icrs, fk5, galactic; default icrs)")
    parser.add_argument("--size", type=parse_size, default=None,
                        help=f"cutout size: pixels (64), ny,nx (64,96) or an angle (30arcsec); default "
                             f"{DEFAULT_SIZE} px")
    parser.add_argument("--outside", choices=OUTSIDE_MODES, default="keep",
                        help="pixels outside a region's shape: keep, mask (blank) or dim")
    columns = parser.add_argument_group("catalogue columns (default: found by name)")
    for role, example in (("ra", "RAJ2000"), ("dec", "DEJ2000"), ("x", "X_IMAGE"), ("y", "Y_IMAGE"),
                          ("id", "NAME")):
        columns.add_argument(f"--{role}-col", metavar="NAME", help=f"{role} column of --catalog (e.g. {example})")
    columns.add_argument("--file-col", metavar="NAME", help="image file column of a survey --catalog (without "
                                                            "FILE; default: file, filename, path, image)")
    columns.add_argument("--skip-outside", action="store_true",
                         help="leave out catalogue rows outside the image or on blank pixels (with a warning)")
    detect = parser.add_argument_group("detection (--detect)")
    detect.add_argument("--nsigma", type=positive_float, default=5.0, help="threshold in sigma (default 5)")
    detect.add_argument("--max-sources", type=positive_int, default=500, help="at most this many sources")
    detect.add_argument("--detect-max-pixels", type=positive_int, default=DETECT_MAX_PIXELS, metavar="N",
                        help="larger images are detected on a block-averaged map, in bounded memory "
                             f"(default {DETECT_MAX_PIXELS})")


def _add_cube_and_stretch(parser) -> None:
    cube = parser.add_argument_group("cubes (3-D data)")
    planes = cube.add_mutually_exclusive_group()
    planes.add_argument("--slice", type=non_negative_int, metavar="N",
                        help="use channel N (channel numbers work without a spectral WCS; km/s ranges need one)")
    planes.add_argument("--sum", metavar="A:B", help="sum channels A..B-1, or a spectral range like -2:5km/s")
    planes.add_argument("--mean", metavar="A:B", help="mean over channels or a spectral range")
    planes.add_argument("--moment0", metavar="A:B", help="moment-0 (integrated intensity) over channels or a range")
    cube.add_argument("--spectral-axis", type=non_negative_int, choices=(0, 1, 2), metavar="AXIS",
                      help="numpy axis of the channels when the cube's WCS does not say (default 0)")
    default = DEFAULT_STRETCH
    stretch = parser.add_argument_group(f"stretch (default: {default.describe()} for data; 8-bit PNG/JPEG "
                                        "pictures as they are)")
    stretch.add_argument("--interval", choices=INTERVALS, default=None,
                         help=f"display limits (default {default.interval}; 'display' keeps a picture's pixels)")
    stretch.add_argument("--stretch", choices=STRETCHES, default=None, help=f"default {default.stretch}")
    stretch.add_argument("--contrast", type=positive_float, default=None,
                         help=f"zscale contrast (default {default.contrast:g})")
    stretch.add_argument("--percentile", type=positive_float, default=None,
                         help=f"percentile interval (default {default.percentile:g})")
    stretch.add_argument("--rgb", choices=RGB_MODES, default=None,
                         help="colour images: one interval for the three bands, keeping colours (joint, the "
                              "default), or each band on its own (per-band)")


def _add_source_options(parser) -> None:
    parser.add_argument("file", nargs="?",
                        help="FITS (also .fits.gz/.bz2/.fz), PNG or JPEG; 'R.fits,G.fits,B.fits' for an RGB "
                             "composite of three bands on one pixel grid. Leave it out for a survey catalogue "
                             "(--catalog with a file column naming each row's image)")
    parser.add_argument("--hdu", help="HDU index or name (default: first HDU with an image)")
    _add_what_to_send(parser)
    _add_cube_and_stretch(parser)


def _add_model_options(parser, *, serving: bool = True) -> None:
    from ..models.loading import DEFAULT_MODEL

    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None,
                       help=f"Hub id, local directory, or server URL such as http://127.0.0.1:8000/v1 "
                            f"(default: the base model of --adapter, else {DEFAULT_MODEL}, downloaded on first use)")
    group.add_argument("--adapter", action="append", metavar="[NAME=]PATH",
                       help="LoRA adapter directory (safetensors); repeat for several, the first is used")
    group.add_argument("--device", help="cpu, cuda, cuda:1, mps or auto (default: the first available)")
    group.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bf16 on GPU, measured on CPU)")
    group.add_argument("--batch-size", type=positive_int, help="images per forward pass (default 16 GPU, 1 CPU)")
    group.add_argument("--tiling", choices=TILING_CHOICES, default="single",
                       help="image tokens per cutout: one tile (default) or the processor's own tiling")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="run Python code shipped with a Hub model (only for authors you trust)")
    if serving:
        group.add_argument("--served-model", help="for a server URL: the served model name")
        group.add_argument("--timeout", type=positive_float, default=60.0,
                           help="for a server URL: seconds for each whole request, connecting to last byte")


def _add_output_options(parser) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--out", metavar="PREFIX", help="write PREFIX.ecsv (or .fits) and PREFIX.reg (or .crtf)")
    group.add_argument("--table-format", choices=tuple(TABLE_FORMATS), default="ecsv")
    group.add_argument("--region-format", choices=tuple(REGION_FORMATS), default="ds9")
    group.add_argument("--overwrite", action="store_true", help="replace existing output files")
    group.add_argument("--resume", action="store_true",
                       help="continue a partial run of the same --out, skipping the cutouts it finished")
    group.add_argument("-v", "--verbose", action="store_true",
                       help="log device, dtype, batch size and tokens, and the libraries' own messages")


def _add_survey_options(parser) -> None:
    from ..survey.engine import ENGINES

    group = parser.add_argument_group("survey catalogues (--catalog with a file column, no FILE)")
    group.add_argument("--engine", choices=ENGINES, default="local",
                       help="run in this process (local, the default) or on a Ray cluster (ray: the one "
                            "--ray-address or RAY_ADDRESS names, else a local one); --out is then a folder")
    group.add_argument("--ray-address", metavar="ADDRESS", help="Ray cluster to run on, e.g. ray://head:10001")
    group.add_argument("--actors", type=positive_int, metavar="N",
                       help="Ray model actors (default: one per GPU, else one CPU actor)")
    group.add_argument("--block-rows", type=positive_int, default=32, metavar="N",
                       help="rows of one image cut per task (default 32)")
    group.add_argument("--shard-rows", type=positive_int, default=256, metavar="N",
                       help="finished rows per Parquet shard, the unit that --resume keeps (default 256)")


def _add_task_parsers(sub) -> None:
    classify = sub.add_parser("classify", help="classify cutouts with calibrated label probabilities")
    _add_source_options(classify)
    labels = classify.add_mutually_exclusive_group()
    labels.add_argument("--labels", nargs="+", metavar="LABEL",
                        help="two or more labels, or one TOML/YAML label file (default: the labels a fine-tuned "
                             "--model or --adapter was trained with)")
    labels.add_argument("--preset", help="a shipped label set (see `astrovlm presets`)")
    classify.add_argument("--question", help="replace the label set's question")
    _add_model_options(classify)
    _add_survey_options(classify)
    _add_output_options(classify)

    ask = sub.add_parser("ask", help="ask a question about each cutout")
    _add_source_options(ask)
    ask.add_argument("question", nargs="*",
                     help="the question, in quotes; several questions are one conversation about each "
                          "cutout, every turn a row of the results table (a survey --catalog without "
                          "FILE asks one question of every row)")
    ask.add_argument("--questions", metavar="FILE",
                     help="a text file of questions, one a line, asked after any given on the command line, "
                          "as one conversation")
    ask.add_argument("--max-new-tokens", type=positive_int, default=128)
    _add_model_options(ask)
    _add_survey_options(ask)
    _add_output_options(ask)

    describe = sub.add_parser("describe", help="caption each cutout")
    _add_source_options(describe)
    describe.add_argument("--max-new-tokens", type=positive_int, default=128)
    describe.add_argument("--preset", help="a shipped describe instruction, e.g. astrollava-caption (see "
                          "`astrovlm presets`)")
    _add_model_options(describe)
    _add_output_options(describe)


# ----------------------------------------------------------------------------- eval and finetune
def _add_data_options(parser, what: str) -> None:
    parser.add_argument("data", nargs="?",
                        help="a folder with one sub-folder of images (PNG, JPEG, FITS) per class; a table "
                             "(ECSV/CSV/FITS) with file and label (or caption) columns" +
                             "; LLaVA conversation JSON; image-caption JSONL")
    group = parser.add_argument_group("FITS image with a catalogue of labelled positions (instead of DATA)")
    group.add_argument("--image", metavar="FITS", help="one FITS image")
    group.add_argument("--catalog", metavar="TABLE", help="table of ra/dec (or x/y) positions with a label column")
    group.add_argument("--label-column", help="label column of --catalog (default: label or class)")
    group.add_argument("--size", type=parse_size, default=None,
                       help="--catalog cutout size: pixels or an angle (default 64)")
    group.add_argument("--hdu", help="HDU index or name of --image")
    parser.add_argument("--image-root", metavar="DIR",
                        help="folder that relative image paths in tables/JSON start from (default: the table's folder)")
    recorded = "the one the model or adapter was trained with, else " if what == "eval" else ""
    labels = parser.add_argument_group(f"label set (default: {recorded}the data's labels with a generic question)")
    exclusive = labels.add_mutually_exclusive_group()
    exclusive.add_argument("--labels", nargs="+", metavar="LABEL", help="the labels, or one TOML/YAML label file")
    exclusive.add_argument("--preset", help="a shipped label set (see `astrovlm presets`)")
    parser.add_argument("--question", help="replace the label set's question")
    default = DEFAULT_STRETCH
    images = parser.add_argument_group("model images" + (f" (default: as recorded by finetune, else "
                                                         f"{default.describe()}, no crop)" if what == "eval" else ""))
    images.add_argument("--crop", type=positive_float, default=None,
                        help="keep this central fraction of each image, e.g. 0.5 (default 1: the whole image)")
    images.add_argument("--interval", choices=INTERVALS, default=None)
    images.add_argument("--stretch", choices=STRETCHES, default=None)
    images.add_argument("--contrast", type=positive_float, default=None,
                        help=f"zscale contrast (default {default.contrast:g})")
    images.add_argument("--percentile", type=positive_float, default=None,
                        help=f"percentile interval (default {default.percentile:g})")
    images.add_argument("--rgb", choices=RGB_MODES, default=None, help="colour images: joint (default) or per-band")
    parser.add_argument("--limit", type=positive_int, help="use a random N images (drawn with --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --limit, bootstrap and training (default 0)")


def _add_eval_parser(sub) -> None:
    from ..evaluation import REPORT_FORMATS

    evaluate = sub.add_parser("eval", help="measure models and adapters on labelled images: accuracy, F1, "
                                           "confusion, calibration",
                              description="Classify every labelled image with each model/adapter and write "
                                          "report.md (or .html), PNG plots, metrics.json and per_image.ecsv.")
    _add_data_options(evaluate, "eval")
    _add_model_options(evaluate)
    compare = evaluate.add_argument_group("comparison")
    compare.add_argument("--compare-base", action="store_true",
                         help="also evaluate the base model with its adapters disabled")
    compare.add_argument("--compare-model", action="append", metavar="MODEL", default=[],
                         help="another model (Hub id, directory or server URL) side by side; repeatable")
    freeform = evaluate.add_argument_group("free-form answers (conversation or caption data)")
    freeform.add_argument("--judge", metavar="MODEL",
                          help="an LLM judge (Hub id, folder or server URL) that grades each answer against "
                               "the reference with a rubric: correct, partially correct, wrong")
    freeform.add_argument("--judge-method", choices=("score", "generate"), default="score",
                          help="score: rank the three verdicts (never outside the rubric); generate: read "
                               "the judge's written verdict (default score)")
    freeform.add_argument("--embedding-model", metavar="MODEL",
                          help="encoder (Hub id or folder) for the embedding similarity of long answers")
    freeform.add_argument("--max-new-tokens", type=positive_int, default=128,
                          help="longest answer (default 128)")
    out = evaluate.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", required=True, help="folder for the report and tables")
    out.add_argument("--format", choices=REPORT_FORMATS, default="md", help="report format (default md)")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    out.add_argument("--overwrite", action="store_true", help="replace an existing report in DIR")
    out.add_argument("-v", "--verbose", action="store_true", help="log device, dtype, batch size and tokens")


#: ``astrovlm finetune`` options that set a `FinetuneConfig` field: (flag, field, type, group, help).
#: Their defaults are the config's, so the two never disagree.
FINETUNE_OPTIONS = (
    ("--method", "method", None, "method", "lora (default), projector only, two-stage (projector then LoRA) or full"),
    ("--lora-r", "lora_r", positive_int, "method", "LoRA rank"),
    ("--lora-alpha", "lora_alpha", positive_float, "method", "LoRA alpha (default 2 * r)"),
    ("--lora-dropout", "lora_dropout", float, "method", "LoRA dropout"),
    ("--target-modules", "target_modules", str, "method",
     "language-model layers LoRA adapts (default q,k,v,o,gate,up,down _proj)"),
    ("--train-vision-tower", "train_vision_tower", bool, "method", "also train the vision tower (frozen by default)"),
    ("--stage1-epochs", "stage1_epochs", positive_float, "method", "two-stage: projector epochs"),
    ("--stage1-lr", "stage1_learning_rate", positive_float, "method", "two-stage: projector learning rate"),
    ("--epochs", "epochs", positive_float, "training", "passes over the data"),
    ("--max-steps", "max_steps", positive_int, "training", "stop after N optimiser updates"),
    ("--lr", "learning_rate", positive_float, "training", "peak learning rate"),
    ("--batch-size", "batch_size", positive_int, "training", "examples per step"),
    ("--grad-accum", "grad_accum", positive_int, "training", "gradient accumulation steps"),
    ("--warmup-ratio", "warmup_ratio", float, "training", "fraction of updates warming up"),
    ("--scheduler", "scheduler", str, "training", "learning-rate schedule"),
    ("--weight-decay", "weight_decay", float, "training", "weight decay"),
    ("--max-length", "max_length", positive_int, "training", "truncate longer examples (tokens)"),
    ("--gradient-checkpointing", "gradient_checkpointing", bool, "training", "save memory at the cost of compute"),
    ("--early-stopping", "early_stopping", positive_int, "training",
     "stop after N validations without a better accuracy (needs --val)"),
    ("--eval-batch-size", "eval_batch_size", positive_int, "training", "images per validation forward pass"),
    ("--cache-gb", "cache_gb", float, "training",
     "memory for encoded training examples (about 3 MB per image; 0 keeps none)"),
)


def _add_finetune_options(groups: dict) -> None:
    from ..training.finetune import DEFAULT_LEARNING_RATES, METHODS, FinetuneConfig

    defaults = {field.name: field.default for field in dataclasses.fields(FinetuneConfig)}
    for flag, name, kind, group, text in FINETUNE_OPTIONS:
        default = defaults[name]
        if kind is bool:
            groups[group].add_argument(flag, dest=name, action="store_true", help=text)
            continue
        if name == "learning_rate":
            text += " (default: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LEARNING_RATES.items()) + ")"
        elif default is not None:
            text += f" (default {default:g})" if isinstance(default, float) else f" (default {default})"
        options = dict(dest=name, default=default, help=text)
        if name == "method":
            options["choices"] = METHODS
        elif name == "target_modules":
            options.update(nargs="+", metavar="NAME")
        else:
            options["type"] = kind
        groups[group].add_argument(flag, **options)


def _add_finetune_parser(sub) -> None:
    from ..models.loading import DEFAULT_MODEL

    tune = sub.add_parser("finetune", help="train a LoRA adapter (or projector / whole model) on labelled "
                                           "images, conversations or captions",
                          description="Fine-tune a local VLM. Writes an adapter (safetensors) or a model folder "
                                      "with a model card into --out; checkpoints go to --out/checkpoints.")
    _add_data_options(tune, "finetune")
    model = tune.add_argument_group("model")
    model.add_argument("--model", default=DEFAULT_MODEL, help=f"base model: Hub id or directory (default {DEFAULT_MODEL})")
    model.add_argument("--device", help="cpu, cuda, cuda:1, mps or auto (default: the first available)")
    model.add_argument("--tiling", choices=TILING_CHOICES, default="single",
                       help="image tokens per cutout: one tile (default) or the processor's own tiling")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="run Python code shipped with a Hub model (only for authors you trust)")
    groups = {"method": tune.add_argument_group("method"), "training": tune.add_argument_group("training")}
    groups["training"].add_argument("--val", metavar="DATA",
                                    help="labelled validation images, scored each epoch as by astrovlm eval")
    groups["training"].add_argument("--val-limit", type=positive_int, help="use a random N validation images")
    _add_finetune_options(groups)
    out = tune.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", required=True, help="folder for the adapter/model, card and checkpoints")
    out.add_argument("--resume", action="store_true", help="continue from the last checkpoint in DIR/checkpoints")
    out.add_argument("--overwrite", action="store_true", help="replace an earlier run in DIR")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("-v", "--verbose", action="store_true", help="log device, parameters and steps")


def build_parser() -> argparse.ArgumentParser:
    """The ``astrovlm`` argument parser."""
    from .. import __version__

    parser = _Parser(prog="astrovlm", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"astrovlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_task_parsers(sub)
    sub.add_parser("presets", help="list the shipped label sets")
    _add_eval_parser(sub)
    _add_finetune_parser(sub)
    return parser
