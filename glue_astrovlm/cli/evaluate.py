"""``astrovlm eval``: models and adapters side by side on labelled images, each used as it was trained."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import AstroVLMError
from .run import adapters_from_args, labels_from_args

__all__ = ["command_eval", "dataset_from_args"]


def _hdu(text):
    return int(text) if text is not None and text.lstrip("-").isdigit() else text


def dataset_from_args(args):
    """The `~glue_astrovlm.datasets.ImageDataset` named by DATA (or --image with --catalog)."""
    from ..datasets import load_dataset, load_fits_catalog

    if args.image or args.catalog:
        if args.data is not None:
            raise AstroVLMError("Give DATA or --image with --catalog, not both.")
        if not (args.image and args.catalog):
            raise AstroVLMError("--image and --catalog go together: a FITS image and a table of labelled "
                                "positions.")
        return load_fits_catalog(args.image, args.catalog, label_col=args.label_column,
                                 size=args.size if args.size is not None else 64, hdu=_hdu(args.hdu))
    if args.data is None:
        raise AstroVLMError("Give the data: a folder of class folders, a table, a JSON file, or --image with "
                            "--catalog.")
    return load_dataset(args.data, image_root=args.image_root)


def stretch_options(args) -> dict:
    """The stretch settings given on the command line (`None`: not given)."""
    from .run import STRETCH_OPTIONS

    return {name: getattr(args, name) for name in STRETCH_OPTIONS}


def _check_out_dir(args) -> Path:
    out_dir = Path(args.out)
    if not args.overwrite:
        names = (f"report.{args.format}", "metrics.json", "per_image.ecsv")
        existing = [n for n in names if (out_dir / n).exists()]
        if existing:
            raise AstroVLMError(f"{out_dir} already holds {', '.join(existing)}; choose another --out or pass "
                                "--overwrite.")
    return out_dir


def _systems(args, adapters: dict) -> list:
    from ..evaluation import System
    from ..models.loading import load_model
    from .run import session_from_args

    vlm = session_from_args(args).vlm()
    systems = [System("base", vlm, None)] if adapters and args.compare_base else []
    systems += [System(name, vlm, name) for name in adapters] or [System(Path(str(args.model)).name or
                                                                         str(args.model), vlm)]
    for other in args.compare_model:
        if str(other).startswith(("http://", "https://")):
            other_vlm = load_model(other, timeout=args.timeout)
        else:
            other_vlm = load_model(other, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                                   tiling=args.tiling, trust_remote_code=args.trust_remote_code)
        name = Path(str(other)).name or str(other)
        if name in [s.name for s in systems]:
            name = f"{name}-{len(systems)}"
        systems.append(System(name, other_vlm))
    return systems


def _load_judge(args):
    from ..judging import Judge
    from ..models.loading import load_model

    if str(args.judge).startswith(("http://", "https://")):
        vlm = load_model(args.judge, timeout=args.timeout)
    else:
        vlm = load_model(args.judge, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                         tiling=args.tiling, trust_remote_code=args.trust_remote_code)
    return Judge(vlm, method=args.judge_method)


def _command_eval_freeform(args, adapters: dict, dataset, out_dir: Path) -> int:
    """``astrovlm eval`` on conversation or caption data: text metrics and an optional judge."""
    from ..freeform import evaluate_freeform
    from .run import stretch_from_args

    systems = _systems(args, adapters)
    judge = _load_judge(args) if args.judge else None
    report = evaluate_freeform(systems, dataset, judge=judge, embedding_model=args.embedding_model,
                               stretch=stretch_from_args(args), crop=args.crop or 1.0,
                               limit=args.limit, seed=args.seed, max_new_tokens=args.max_new_tokens,
                               show_progress=True)
    same = report.same_model_judge()
    if same:
        print(f"warning: the judge {judge.name} is the same model as {', '.join(same)}; its grades of its "
              "own answers are not independent (see the report).", file=sys.stderr)
    written = report.write(out_dir, format=args.format, overwrite=args.overwrite)
    names = ["exact_match", "chrf", "rouge_l", "embedding"] + (["judge"] if judge is not None else [])
    for system in report.systems:
        summary = system.summary(report.n_boot, report.seed)
        shown = "\t".join(f"{name} {summary[name]['mean']:.3f}" for name in names if summary[name]["n"])
        print(f"{system.name}\t{shown}\t({len(system.cases)} questions)")
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def command_eval(args) -> int:
    """``astrovlm eval``; returns the exit status."""
    from ..evaluation import evaluate
    from ..records import evaluation_setup, finetune_records

    adapters = adapters_from_args(args.adapter) or {}
    if args.compare_base and not adapters:
        raise AstroVLMError("--compare-base compares adapters with their base model; give --adapter too.")
    out_dir = _check_out_dir(args)
    dataset = dataset_from_args(args)
    if dataset.kind != "classification":
        return _command_eval_freeform(args, adapters, dataset, out_dir)
    if args.judge or args.embedding_model:
        raise AstroVLMError("--judge and --embedding-model grade free-form answers; give conversation or "
                            "caption data (LLaVA JSON, captions JSONL) to use them.")
    places = [(path, "adapter") for path in adapters.values()]
    places += [(model, "model") for model in [args.model, *args.compare_model]]
    setup = evaluation_setup(finetune_records(places), dataset, labels=labels_from_args(args),
                             question=args.question, stretch_options=stretch_options(args), crop=args.crop)
    from ..datasets import check_images

    check_images(dataset, crop=setup.crop, what="evaluation")  # every image, before any model loads
    report = evaluate(_systems(args, adapters), dataset, setup.label_set, stretch=setup.stretch, crop=setup.crop,
                      limit=args.limit, seed=args.seed, show_progress=True)
    written = report.write(out_dir, format=args.format, overwrite=args.overwrite, plots=not args.no_plots)
    for system in report.systems:
        m = system.metrics
        print(f"{system.name}\taccuracy {m.accuracy:.3f} [{m.accuracy_ci[0]:.3f}, {m.accuracy_ci[1]:.3f}]\t"
              f"macro F1 {m.macro['f1']:.3f}\tECE {m.ece:.3f}\t({m.n} images)")
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0
