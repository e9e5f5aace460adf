"""The ``astrovlm`` command line: classify, ask about and describe astronomical images; evaluate and
fine-tune models on labelled images.

``classify``, ``ask`` and ``describe`` read an image (FITS, compressed FITS, PNG/JPEG, or three FITS bands
as ``R,G,B``),
cuts it into model images (whole image, a position, regions, a catalogue, or detected sources), runs a
local or remote model and writes an ECSV/FITS table and a DS9/CRTF region file. User errors print one
line saying what to do and exit with status 2; Ctrl-C keeps finished results. ``eval`` writes a
report comparing models and adapters on labelled images; ``finetune`` trains a LoRA adapter (or a
projector, or the whole model) on them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import AstroVLMError

__all__ = ["main", "build_parser"]

log = logging.getLogger("glue_astrovlm")


# ----------------------------------------------------------------------------- parsing helpers
def _size(text: str):
    """``64`` (pixels), ``64,32`` (ny,nx pixels) or an angle such as ``30arcsec``/``1.5arcmin``."""
    import astropy.units as u

    text = text.strip()
    try:
        if "," in text:
            ny, nx = (int(v) for v in text.split(","))
            return (ny, nx)
        return int(text)
    except ValueError:
        pass
    try:
        quantity = u.Quantity(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"size {text!r} is neither pixels (64) nor an angle (30arcsec)")
    if quantity.unit.physical_type != "angle":
        raise argparse.ArgumentTypeError(f"size {text!r} must be in pixels or an angle unit")
    return quantity


def _sky_position(ra: str, dec: str, frame: str):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    try:
        if frame == "galactic":
            return SkyCoord(float(ra), float(dec), unit="deg", frame="galactic")
        try:
            return SkyCoord(float(ra), float(dec), unit="deg", frame=frame)
        except ValueError:
            return SkyCoord(ra, dec, unit=(u.hourangle, u.deg), frame=frame)
    except Exception as error:  # astropy raises several types for bad angles
        raise AstroVLMError(f"Could not read the position {ra} {dec}: {error}. Give degrees (150.1 2.2) or "
                            "sexagesimal (10h00m24s +02d12m00s).") from error


def _channel_range(text: str):
    """``3:9`` (channels, inclusive start, exclusive stop) or ``-1.5:3km/s`` (spectral values)."""
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
        start_q = u.Quantity(float(start), stop_q.unit) if start.strip().lstrip("-+").replace(".", "").isdigit() \
            else u.Quantity(start)
    except (TypeError, ValueError) as error:
        raise AstroVLMError(f"Could not read spectral range {text!r}: {error}") from error
    return start_q, stop_q


def _adapter_arg(values):
    if not values:
        return None
    adapters = {}
    for value in values:
        name, _, path = value.rpartition("=")
        adapters[name or Path(path).name] = path
    return adapters


def _has_finetune_record(args) -> bool:
    """Whether the first --adapter, or else the --model folder, was written by `astrovlm finetune`."""
    from .records import read_finetune_record

    adapters = _adapter_arg(getattr(args, "adapter", None))
    where = next(iter(adapters.values())) if adapters else args.model
    return Path(str(where)).expanduser().is_dir() and read_finetune_record(Path(str(where)).expanduser()) is not None


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="FITS (also .fits.gz/.bz2/.fz), PNG or JPEG; 'R.fits,G.fits,B.fits' for "
                                     "an RGB composite of three bands on one pixel grid")
    parser.add_argument("--hdu", help="HDU index or name (default: first HDU with an image)")
    where = parser.add_argument_group("what to send (default: the whole image)").add_mutually_exclusive_group()
    where.add_argument("--regions", metavar="REG", help="DS9/CRTF region file: one cutout per shape")
    where.add_argument("--catalog", metavar="TABLE", help="table (ECSV, FITS, CSV) of ra/dec or x/y positions")
    where.add_argument("--position", nargs=2, metavar=("RA", "DEC"), help="sky position, degrees or sexagesimal")
    where.add_argument("--pixel", nargs=2, type=float, metavar=("X", "Y"),
                       help="pixel position, 0-based as in astropy (ds9 shows 1-based)")
    where.add_argument("--detect", action="store_true", help="find sources with photutils and send each one")
    parser.add_argument("--frame", default="icrs", help="frame of --position (icrs, fk5, galactic; default icrs)")
    parser.add_argument("--size", type=_size, default=None,
                        help="cutout size: pixels (64), ny,nx (64,96) or an angle (30arcsec); default 128 px")
    parser.add_argument("--outside", choices=("keep", "mask", "dim"), default="keep",
                        help="pixels outside a region's shape: keep, mask (blank) or dim")
    parser.add_argument("--nsigma", type=float, default=5.0, help="--detect threshold in sigma (default 5)")
    parser.add_argument("--max-sources", type=int, default=500, help="--detect: at most this many sources")
    cube = parser.add_argument_group("cubes (3-D data)").add_mutually_exclusive_group()
    cube.add_argument("--slice", type=int, metavar="N", help="use spectral channel N")
    cube.add_argument("--sum", metavar="A:B", help="sum channels A..B-1, or a spectral range like -2:5km/s")
    cube.add_argument("--mean", metavar="A:B", help="mean over channels or a spectral range")
    cube.add_argument("--moment0", metavar="A:B", help="moment-0 (integrated intensity) over channels or a range")
    stretch = parser.add_argument_group("stretch (default: zscale, contrast 0.25, linear)")
    stretch.add_argument("--interval", choices=("zscale", "percentile", "minmax"), default="zscale")
    stretch.add_argument("--stretch", choices=("linear", "sqrt", "log", "asinh"), default="linear")
    stretch.add_argument("--contrast", type=float, default=0.25, help="zscale contrast (default 0.25)")
    stretch.add_argument("--percentile", type=float, default=99.5, help="percentile interval (default 99.5)")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    from .models.loading import DEFAULT_MODEL

    group = parser.add_argument_group("model")
    group.add_argument("--model", default=None,
                       help=f"Hub id, local directory, or server URL such as http://127.0.0.1:8000/v1 "
                            f"(default: the base model of --adapter, else {DEFAULT_MODEL}, downloaded on first use)")
    group.add_argument("--adapter", action="append", metavar="[NAME=]PATH",
                       help="LoRA adapter directory (safetensors); repeat for several, the first is used")
    group.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the first available)")
    group.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bf16 on GPU, measured on CPU)")
    group.add_argument("--batch-size", type=int, help="images per forward pass (default 16 GPU, 1 CPU)")
    group.add_argument("--tiling", choices=("single", "default"), default="single",
                       help="image tokens per cutout: one tile (default) or the processor's own tiling")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="run Python code shipped with a Hub model (only for authors you trust)")
    group.add_argument("--served-model", help="for a server URL: the served model name")
    group.add_argument("--timeout", type=float, default=60.0, help="for a server URL: seconds per request")


def _add_output_options(parser: argparse.ArgumentParser, regions: bool = True) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--out", metavar="PREFIX", help="write PREFIX.ecsv (or .fits)" +
                       (" and PREFIX.reg (or .crtf)" if regions else ""))
    group.add_argument("--table-format", choices=("ecsv", "fits"), default="ecsv")
    if regions:
        group.add_argument("--region-format", choices=("ds9", "crtf"), default="ds9")
    group.add_argument("--overwrite", action="store_true", help="replace existing output files")
    group.add_argument("-v", "--verbose", action="store_true", help="log device, dtype, batch size and tokens")


def build_parser() -> argparse.ArgumentParser:
    """The ``astrovlm`` argument parser."""
    parser = argparse.ArgumentParser(prog="astrovlm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True)

    classify = sub.add_parser("classify", help="classify cutouts with calibrated label probabilities")
    _add_source_options(classify)
    labels = classify.add_mutually_exclusive_group()
    labels.add_argument("--labels", nargs="+", metavar="LABEL",
                        help="two or more labels, or one TOML/YAML label file (default: the labels a fine-tuned "
                             "--model or --adapter was trained with)")
    labels.add_argument("--preset", help="a shipped label set (see `astrovlm presets`)")
    classify.add_argument("--question", help="replace the label set's question")
    _add_model_options(classify)
    _add_output_options(classify)

    ask = sub.add_parser("ask", help="ask a question about each cutout")
    _add_source_options(ask)
    ask.add_argument("question", help="the question, in quotes")
    ask.add_argument("--max-new-tokens", type=int, default=128)
    _add_model_options(ask)
    _add_output_options(ask)

    describe = sub.add_parser("describe", help="caption each cutout")
    _add_source_options(describe)
    describe.add_argument("--max-new-tokens", type=int, default=128)
    _add_model_options(describe)
    _add_output_options(describe)

    sub.add_parser("presets", help="list the shipped label sets")
    _add_eval_parser(sub)
    _add_finetune_parser(sub)
    return parser


def _add_data_options(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("data", nargs="?",
                        help="a folder with one sub-folder of images (PNG, JPEG, FITS) per class; a table "
                             "(ECSV/CSV/FITS) with file and label (or caption) columns" +
                             ("; LLaVA conversation JSON; image-caption JSONL" if what == "finetune" else ""))
    group = parser.add_argument_group("FITS image with a catalogue of labelled positions (instead of DATA)")
    group.add_argument("--image", metavar="FITS", help="one FITS image")
    group.add_argument("--catalog", metavar="TABLE",
                       help="table of ra/dec (or x/y) positions with a label column")
    group.add_argument("--label-column", help="label column of --catalog (default: label or class)")
    group.add_argument("--size", type=_size, default=None,
                       help="--catalog cutout size: pixels or an angle (default 64)")
    group.add_argument("--hdu", help="HDU index or name of --image")
    parser.add_argument("--image-root", metavar="DIR",
                        help="folder that relative image paths in tables/JSON start from (default: the table's folder)")
    labels = parser.add_argument_group("label set (default: " + ("the one the model or adapter was trained with, "
                                                                 "else " if what == "eval" else "") +
                                       "the data's labels with a generic question)").add_mutually_exclusive_group()
    labels.add_argument("--labels", nargs="+", metavar="LABEL", help="the labels, or one TOML/YAML label file")
    labels.add_argument("--preset", help="a shipped label set (see `astrovlm presets`)")
    parser.add_argument("--question", help="replace the label set's question")
    images = parser.add_argument_group("model images" + (" (default: as recorded by finetune, else zscale "
                                                         "contrast 0.25 linear, no crop)" if what == "eval" else ""))
    images.add_argument("--crop", type=float, default=None,
                        help="keep this central fraction of each image, e.g. 0.5 (default 1: the whole image)")
    images.add_argument("--interval", choices=("zscale", "percentile", "minmax"), default=None)
    images.add_argument("--stretch", choices=("linear", "sqrt", "log", "asinh"), default=None)
    images.add_argument("--contrast", type=float, default=None, help="zscale contrast (default 0.25)")
    images.add_argument("--percentile", type=float, default=None, help="percentile interval (default 99.5)")
    parser.add_argument("--limit", type=int, help="use a random N images (drawn with --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --limit, bootstrap and training (default 0)")


def _add_eval_parser(sub) -> None:
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
    out = evaluate.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", required=True, help="folder for the report and tables")
    out.add_argument("--format", choices=("md", "html"), default="md", help="report format (default md)")
    out.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    out.add_argument("--overwrite", action="store_true", help="replace an existing report in DIR")
    out.add_argument("-v", "--verbose", action="store_true", help="log device, dtype, batch size and tokens")


def _add_finetune_parser(sub) -> None:
    from .training.finetune import DEFAULT_LEARNING_RATES, METHODS

    tune = sub.add_parser("finetune", help="train a LoRA adapter (or projector / whole model) on labelled "
                                           "images, conversations or captions",
                          description="Fine-tune a local VLM. Writes an adapter (safetensors) or a model folder "
                                      "with a model card into --out; checkpoints go to --out/checkpoints.")
    _add_data_options(tune, "finetune")
    model = tune.add_argument_group("model")
    from .models.loading import DEFAULT_MODEL

    model.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"base model: Hub id or directory (default {DEFAULT_MODEL})")
    model.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the first available)")
    model.add_argument("--tiling", choices=("single", "default"), default="single",
                       help="image tokens per cutout: one tile (default) or the processor's own tiling")
    model.add_argument("--trust-remote-code", action="store_true",
                       help="run Python code shipped with a Hub model (only for authors you trust)")
    method = tune.add_argument_group("method")
    method.add_argument("--method", choices=METHODS, default="lora",
                        help="lora (default), projector only, two-stage (projector then LoRA) or full")
    method.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    method.add_argument("--lora-alpha", type=float, help="LoRA alpha (default 2 * r)")
    method.add_argument("--lora-dropout", type=float, default=0.05)
    method.add_argument("--target-modules", nargs="+", metavar="NAME",
                        help="language-model layers LoRA adapts (default q,k,v,o,gate,up,down _proj)")
    method.add_argument("--train-vision-tower", action="store_true",
                        help="also train the vision tower (frozen by default)")
    method.add_argument("--stage1-epochs", type=float, default=1.0, help="two-stage: projector epochs (default 1)")
    method.add_argument("--stage1-lr", type=float, default=1e-3, help="two-stage: projector learning rate")
    train = tune.add_argument_group("training")
    train.add_argument("--val", metavar="DATA",
                       help="labelled validation images, scored each epoch as by astrovlm eval")
    train.add_argument("--val-limit", type=int, help="use a random N validation images")
    train.add_argument("--epochs", type=float, default=3.0, help="passes over the data (default 3)")
    train.add_argument("--max-steps", type=int, help="stop after N optimiser updates")
    train.add_argument("--lr", type=float, help="peak learning rate (default: " +
                       ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LEARNING_RATES.items()) + ")")
    train.add_argument("--batch-size", type=int, default=4, help="examples per step (default 4)")
    train.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps (default 1)")
    train.add_argument("--warmup-ratio", type=float, default=0.05,
                       help="fraction of updates warming up (default 0.05)")
    train.add_argument("--scheduler", default="cosine", help="learning-rate schedule (default cosine)")
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--max-length", type=int, help="truncate longer examples (tokens)")
    train.add_argument("--gradient-checkpointing", action="store_true", help="save memory at the cost of compute")
    train.add_argument("--early-stopping", type=int, metavar="N",
                       help="stop after N validations without a better accuracy (needs --val)")
    train.add_argument("--eval-batch-size", type=int, default=8, help="images per validation forward pass")
    train.add_argument("--cache-gb", type=float, default=2.0,
                       help="memory for encoded training examples (default 2; about 3 MB per image)")
    out = tune.add_argument_group("output")
    out.add_argument("--out", metavar="DIR", required=True,
                     help="folder for the adapter/model, card and checkpoints")
    out.add_argument("--resume", action="store_true", help="continue from the last checkpoint in DIR/checkpoints")
    out.add_argument("--overwrite", action="store_true", help="replace an earlier run in DIR")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("-v", "--verbose", action="store_true", help="log device, parameters and steps")


def _version() -> str:
    from . import __version__

    return f"astrovlm {__version__}"


# ----------------------------------------------------------------------------- the pipeline
def build_cutouts(args) -> list:
    """Turn the source options into a list of `Cutout` objects."""
    import astropy.units as u

    from . import cutouts as cut
    from .cubes import reduce_cube
    from .sources import open_image
    from .stretch import Stretch

    stretch = Stretch(interval=args.interval, stretch=args.stretch, contrast=args.contrast,
                      percentile=args.percentile)
    hdu = args.hdu
    if hdu is not None and hdu.lstrip("-").isdigit():
        hdu = int(hdu)
    files = [f for f in args.file.split(",") if f]
    if len(files) == 3:
        source = cut.rgb_composite(*(open_image(f, hdu=hdu) for f in files))
    elif len(files) == 1:
        source = open_image(files[0], hdu=hdu)
    else:
        raise AstroVLMError(f"Give one image, or three bands as R,G,B; got {len(files)} files.")

    cube_mode = next(((mode, getattr(args, mode)) for mode in ("slice", "sum", "mean", "moment0")
                      if getattr(args, mode) is not None), None)
    if cube_mode is not None:
        mode, value = cube_mode
        if mode == "slice":
            source = reduce_cube(source, mode="slice", index=value)
        else:
            source = reduce_cube(source, mode=mode, spectral_range=_channel_range(value))
    elif getattr(source, "ndim", 2) == 3 and not getattr(source, "is_rgb", False):
        raise AstroVLMError(f"{args.file} is a cube; choose a plane with --slice N, --sum A:B, --mean A:B "
                            "or --moment0 A:B.")

    size = args.size if args.size is not None else 128
    if args.regions:
        return cut.cutouts_from_regions(source, args.regions, outside=args.outside, stretch=stretch)
    if args.catalog:
        return cut.cutouts_from_catalog(source, args.catalog, size=size, stretch=stretch)
    if args.position:
        return [cut.cutout_at(source, _sky_position(*args.position, args.frame), size, stretch=stretch)]
    if args.pixel:
        return [cut.cutout_at(source, tuple(args.pixel), size, stretch=stretch)]
    if args.detect:
        from .detect import detect_sources

        table = detect_sources(source, nsigma=args.nsigma, max_sources=args.max_sources)
        log.info("Detected %d sources", len(table))
        return cut.cutouts_from_catalog(source, table, size=size, stretch=stretch)
    if isinstance(size, u.Quantity) or args.size is not None:
        log.info("--size applies to positions, catalogues and detections; sending the whole image")
    return [cut.whole_image(source, stretch=stretch)]


def _load(args):
    from .models.loading import load_model

    if str(args.model).startswith(("http://", "https://")):
        return load_model(args.model, served_model=args.served_model, timeout=args.timeout)
    return load_model(args.model, device=args.device, dtype=args.dtype, adapter=_adapter_arg(args.adapter),
                      batch_size=args.batch_size, tiling=args.tiling, trust_remote_code=args.trust_remote_code)


def _run_with_progress(vlm, cutouts, call, description: str):
    """Run ``call(chunk)`` over chunks with a tqdm bar; Ctrl-C stops and keeps finished results."""
    from tqdm.auto import tqdm

    chunk = max(1, getattr(vlm, "batch_size", 4))
    results, interrupted = [], False
    with tqdm(total=len(cutouts), desc=description, unit="cutout", disable=len(cutouts) < 2,
              file=sys.stderr) as bar:
        try:
            for start in range(0, len(cutouts), chunk):
                part = call(cutouts[start:start + chunk])
                results.extend(part)
                bar.update(len(part))
        except KeyboardInterrupt:
            interrupted = True
    return results, interrupted


def _write_outputs(args, results, labels=None) -> None:
    from .results import write_regions, write_table

    if not args.out or not results:
        return
    prefix = Path(args.out)
    table_path = prefix.with_name(prefix.name + "." + args.table_format)
    written = [write_table(results, table_path, overwrite=args.overwrite)]
    if getattr(args, "region_format", None) and any(r.provenance is not None for r in results):
        suffix = ".reg" if args.region_format == "ds9" else ".crtf"
        try:
            written.append(write_regions(results, prefix.with_name(prefix.name + suffix),
                                         overwrite=args.overwrite, labels=labels))
        except AstroVLMError as error:
            print(f"note: no region file written: {error}", file=sys.stderr)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)


def _check_outputs_free(args) -> None:
    """Refuse before any model work if outputs exist, so that no computation is wasted."""
    if not args.out or args.overwrite:
        return
    prefix = Path(args.out)
    suffixes = ["." + args.table_format]
    if getattr(args, "region_format", None):
        suffixes.append(".reg" if args.region_format == "ds9" else ".crtf")
    for suffix in suffixes:
        path = prefix.with_name(prefix.name + suffix)
        if path.exists():
            raise AstroVLMError(f"{path} already exists; choose another --out or pass --overwrite.")


def _print_results(results) -> None:
    for result in results:
        where = result.source_id or "-"
        if result.task == "classify":
            probs = "  ".join(f"{k}={v:.3f}" for k, v in result.probabilities.items())
            print(f"{where}\t{result.label}\t{result.confidence:.3f}\t{probs}")
        else:
            print(f"{where}\t{result.answer}")


def _command_presets() -> int:
    from .labelsets import list_presets

    for preset in list_presets():
        print(f"{preset.name}: {preset.title}")
        for label, description in zip(preset.labels, preset.descriptions):
            print(f"    {label:<26} {description}")
    return 0


def _command_run(args) -> int:
    _check_outputs_free(args)
    labels = _labels_arg(args) if args.command == "classify" else None  # checked before any model work
    if args.command == "classify" and labels is None and not _has_finetune_record(args):
        raise AstroVLMError("Give --labels or --preset (see `astrovlm presets`). Only a model or adapter made by "
                            "`astrovlm finetune` brings its own labels.")
    cutouts = build_cutouts(args)
    log.info("%d cutout(s) from %s", len(cutouts), args.file)
    vlm = _load(args)
    if args.command == "classify" and labels is None:
        from .records import recorded_label_set

        labels = recorded_label_set(vlm.trained_record())
        if labels is None:
            raise AstroVLMError("Give --labels or --preset: this model has no label set from `astrovlm finetune`.")
        if args.question:
            from .labelsets import resolve_labels

            labels = resolve_labels(labels, question=args.question)
    if args.command == "classify":
        def call(chunk):
            return vlm.classify(chunk, labels)
    elif args.command == "ask":
        def call(chunk):
            return vlm.ask(chunk, args.question, max_new_tokens=args.max_new_tokens)
    else:
        def call(chunk):
            return vlm.describe(chunk, max_new_tokens=args.max_new_tokens)
    results, interrupted = _run_with_progress(vlm, cutouts, call, args.command)
    _print_results(results)
    _write_outputs(args, results, labels.labels if labels is not None else None)
    if interrupted:
        print(f"interrupted: {len(results)} of {len(cutouts)} cutouts done; finished results kept",
              file=sys.stderr)
        return 130
    return 0


# ----------------------------------------------------------------------------- eval and finetune
def _labels_arg(args):
    """The label set the user asked for, or None."""
    from .labelsets import resolve_labels

    if args.labels is None and args.preset is None:
        return None
    given = args.labels
    if given and len(given) == 1 and Path(given[0]).suffix.lower() in {".toml", ".yaml", ".yml"}:
        given = given[0]
    return resolve_labels(given, args.preset, args.question)


def _read_data(args):
    """The ImageDataset named by DATA (or --image/--catalog)."""
    from .datasets import load_dataset, load_fits_catalog

    if args.image or args.catalog:
        if args.data is not None:
            raise AstroVLMError("Give DATA or --image with --catalog, not both.")
        if not (args.image and args.catalog):
            raise AstroVLMError("--image and --catalog go together: a FITS image and a table of labelled "
                                "positions.")
        hdu = args.hdu
        if hdu is not None and hdu.lstrip("-").isdigit():
            hdu = int(hdu)
        return load_fits_catalog(args.image, args.catalog, label_col=args.label_column,
                                 size=args.size if args.size is not None else 64, hdu=hdu)
    if args.data is None:
        raise AstroVLMError("Give the data: a folder of class folders, a table, a JSON file, or --image with "
                            "--catalog.")
    return load_dataset(args.data, image_root=args.image_root)


def _stretch_arg(args, recorded: dict | None = None):
    """The stretch from the options; unset options come from ``recorded`` (a finetune record), else defaults."""
    from .stretch import Stretch

    base = dict((recorded or {}).get("stretch") or {})
    for name in ("interval", "stretch", "contrast", "percentile"):
        if getattr(args, name) is not None:
            base[name] = getattr(args, name)
    known = ("interval", "stretch", "contrast", "percentile", "a")
    return Stretch(**{k: v for k, v in base.items() if k in known})


def _command_eval(args) -> int:
    from .evaluation import System, evaluate
    from .records import check_label_set, read_finetune_record, recorded_label_set

    adapters = _adapter_arg(args.adapter) or {}
    if args.compare_base and not adapters:
        raise AstroVLMError("--compare-base compares adapters with their base model; give --adapter too.")
    out_dir = Path(args.out)
    if not args.overwrite:
        names = (f"report.{args.format}", "metrics.json", "per_image.ecsv")
        existing = [n for n in names if (out_dir / n).exists()]
        if existing:
            raise AstroVLMError(f"{out_dir} already holds {', '.join(existing)}; choose another --out or pass "
                                "--overwrite.")
    dataset = _read_data(args)
    # what each model/adapter was trained with: label set, stretch and crop
    sources = [(path, "adapter") for path in adapters.values()]
    sources += [(m, "model") for m in [args.model] + list(args.compare_model) if Path(m).is_dir()]
    records = [(path, what, read_finetune_record(path)) for path, what in sources]
    records = [(path, what, record) for path, what, record in records if record]
    labels = _labels_arg(args)
    if labels is None:
        trained = next((recorded_label_set(r) for _, _, r in records if recorded_label_set(r)), None)
        labels = dataset.label_set(trained)
        if args.question:
            from .labelsets import LabelSet

            labels = LabelSet(labels.labels, labels.descriptions, args.question, labels.name, labels.title)
    for path, what, _ in records:
        check_label_set(labels, path, what)
    recorded = records[0][2] if records else None
    stretch = _stretch_arg(args, recorded)
    crop = args.crop if args.crop is not None else float((recorded or {}).get("crop", 1.0))
    if recorded and args.crop is None:
        log.info("Using the crop (%g) and stretch (%s) recorded in %s", crop, stretch.describe(), records[0][0])

    systems = []
    vlm = _load(args)
    if adapters:
        if args.compare_base:
            systems.append(System("base", vlm, None))
        systems += [System(name, vlm, name) for name in adapters]
    else:
        systems.append(System(Path(str(args.model)).name or str(args.model), vlm))
    for other in args.compare_model:
        from .models.loading import load_model

        if str(other).startswith(("http://", "https://")):
            other_vlm = load_model(other, timeout=args.timeout)
        else:
            other_vlm = load_model(other, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                                   tiling=args.tiling, trust_remote_code=args.trust_remote_code)
        name = Path(str(other)).name or str(other)
        if name in [s.name for s in systems]:
            name = f"{name}-{len(systems)}"
        systems.append(System(name, other_vlm))
    report = evaluate(systems, dataset, labels, stretch=stretch, crop=crop, limit=args.limit, seed=args.seed,
                      show_progress=True)
    written = report.write(out_dir, format=args.format, overwrite=args.overwrite, plots=not args.no_plots)
    for system in report.systems:
        m = system.metrics
        print(f"{system.name}\taccuracy {m.accuracy:.3f} [{m.accuracy_ci[0]:.3f}, {m.accuracy_ci[1]:.3f}]\t"
              f"macro F1 {m.macro['f1']:.3f}\tECE {m.ece:.3f}\t({m.n} images)")
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _command_finetune(args) -> int:
    from .records import read_finetune_record, recorded_label_set
    from .training import FinetuneConfig, finetune

    config = FinetuneConfig(
        method=args.method, epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size,
        grad_accum=args.grad_accum, warmup_ratio=args.warmup_ratio, scheduler=args.scheduler,
        weight_decay=args.weight_decay, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, target_modules=args.target_modules,
        train_vision_tower=args.train_vision_tower, gradient_checkpointing=args.gradient_checkpointing,
        early_stopping=args.early_stopping, max_steps=args.max_steps, seed=args.seed, max_length=args.max_length,
        stage1_epochs=args.stage1_epochs, stage1_learning_rate=args.stage1_lr,
        eval_batch_size=args.eval_batch_size, cache_gb=args.cache_gb)
    train = _read_data(args).sample(args.limit, args.seed)
    val = None
    if args.val:
        from .datasets import load_dataset

        val = load_dataset(args.val, image_root=args.image_root).sample(args.val_limit, args.seed)
    labels = _labels_arg(args)
    if labels is None and Path(args.model).is_dir():
        labels = recorded_label_set(read_finetune_record(args.model))
    crop = args.crop if args.crop is not None else 1.0
    stretch = _stretch_arg(args)
    vlm = None
    if args.tiling != "single" or args.trust_remote_code:
        from .models.loading import load_model

        vlm = load_model(args.model, device=args.device, dtype="float32", tiling=args.tiling,
                         trust_remote_code=args.trust_remote_code)
    result = finetune(vlm or args.model, train, args.out, label_set=labels, val=val, config=config,
                      stretch=stretch, crop=crop, resume=args.resume, overwrite=args.overwrite, device=args.device,
                      show_progress=not args.no_progress)
    record = result.record
    print(f"{record['method']}: {record['steps']} updates, {record['epochs']:.2f} epochs in "
          f"{record['train_seconds']:.0f} s; last training loss {record['final_loss']:.4f}")
    if result.validation:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in result.validation.items()))
    how = (f"load_model({record['base_model']!r}, adapter={str(result.out_dir)!r})" if result.is_adapter
           else f"load_model({str(result.out_dir)!r})")
    print(f"wrote {result.out_dir} (use it with {how})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``astrovlm`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "adapter") and getattr(args, "model", "") is None:
        from .models.loading import DEFAULT_MODEL
        from .records import adapter_base_model

        args.model = adapter_base_model(_adapter_arg(args.adapter)) or DEFAULT_MODEL
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "presets":
            return _command_presets()
        if args.command == "eval":
            return _command_eval(args)
        if args.command == "finetune":
            return _command_finetune(args)
        return _command_run(args)
    except AstroVLMError as error:
        print(f"astrovlm: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
