"""The ``astrovlm`` command line: classify, ask about and describe astronomical images.

Every command reads an image (FITS, compressed FITS, PNG/JPEG, or three FITS bands as ``R,G,B``),
cuts it into model images (whole image, a position, regions, a catalogue, or detected sources), runs a
local or remote model and writes an ECSV/FITS table and a DS9/CRTF region file. User errors print one
line saying what to do and exit with status 2; Ctrl-C keeps finished results.
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
    group.add_argument("--model", default=DEFAULT_MODEL,
                       help=f"Hub id, local directory, or server URL such as http://127.0.0.1:8000/v1 "
                            f"(default {DEFAULT_MODEL}, downloaded on first use)")
    group.add_argument("--adapter", action="append", metavar="[NAME=]PATH",
                       help="LoRA adapter directory (safetensors); repeat for several, the first is used")
    group.add_argument("--device", help="cuda, cuda:1, mps or cpu (default: the first available)")
    group.add_argument("--dtype", help="float32, bfloat16 or float16 (default: bf16 on GPU, measured on CPU)")
    group.add_argument("--batch-size", type=int, help="images per forward pass (default 16 GPU, 4 CPU)")
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
    labels = classify.add_mutually_exclusive_group(required=True)
    labels.add_argument("--labels", nargs="+", metavar="LABEL",
                        help="two or more labels, or one TOML/YAML label file")
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
    return parser


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
    labels = None
    if args.command == "classify":
        from .labelsets import resolve_labels

        given = args.labels
        if given and len(given) == 1 and Path(given[0]).suffix.lower() in {".toml", ".yaml", ".yml"}:
            given = given[0]
        labels = resolve_labels(given, args.preset, args.question)
    cutouts = build_cutouts(args)
    log.info("%d cutout(s) from %s", len(cutouts), args.file)
    vlm = _load(args)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``astrovlm`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "presets":
            return _command_presets()
        return _command_run(args)
    except AstroVLMError as error:
        print(f"astrovlm: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
