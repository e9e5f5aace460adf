"""``astrovlm finetune``: LoRA (or projector, two-stage, full) fine-tuning on labelled images,
conversations or captions."""

from __future__ import annotations

import sys
from pathlib import Path

from .evaluate import dataset_from_args, stretch_options
from .parser import FINETUNE_OPTIONS
from .run import labels_from_args

__all__ = ["command_finetune"]


def command_finetune(args) -> int:
    """``astrovlm finetune``; returns the exit status."""
    from ..records import read_finetune_record, recorded_label_set, recorded_stretch
    from ..training import FinetuneConfig, finetune

    config = FinetuneConfig(**{name: getattr(args, name) for _, name, *_ in FINETUNE_OPTIONS}, seed=args.seed)
    train = dataset_from_args(args).sample(args.limit, args.seed)
    val = None
    if args.val:
        from ..datasets import load_dataset

        val = load_dataset(args.val, image_root=args.image_root).sample(args.val_limit, args.seed)
    labels = labels_from_args(args)
    if labels is None and Path(args.model).is_dir():
        labels = recorded_label_set(read_finetune_record(args.model))
    stretch = recorded_stretch(None, **stretch_options(args))  # None: data stretched, pictures as they are
    load_options = {"tiling": args.tiling, "trust_remote_code": args.trust_remote_code}
    result = finetune(args.model, train, args.out, label_set=labels, val=val, config=config, stretch=stretch,
                      crop=args.crop if args.crop is not None else 1.0, resume=args.resume,
                      overwrite=args.overwrite, device=args.device, show_progress=not args.no_progress,
                      load_options=load_options)
    record = result.record
    print(f"{record['method']}: {record['steps']} updates, {record['epochs']:.2f} epochs in "
          f"{record['train_seconds']:.0f} s; last training loss {record['final_loss']:.4f}")
    if result.validation:
        print("validation: " + ", ".join(f"{k} {v:.4f}" for k, v in result.validation.items()))
    how = (f"load_model({record['base_model']!r}, adapter={str(result.out_dir)!r})" if result.is_adapter
           else f"load_model({str(result.out_dir)!r})")
    print(f"wrote {result.out_dir} (use it with {how})", file=sys.stderr)
    return 0
