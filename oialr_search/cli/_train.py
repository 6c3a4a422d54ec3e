"""``oialr-search train``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..exceptions import OIALRSearchError
from ..training import bundled_configs
from ._common import write_atomic


def cmd_train(args: argparse.Namespace) -> int:
    from ..training import Trainer, TrainingDiverged, config_to_dict, dump_config, load_config, resolve_config_path

    config = load_config(resolve_config_path(args.config), args.set)
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise OIALRSearchError(f"--out {out}: is a folder; give a file name such as {out / 'metrics.json'}")
    log = None if args.quiet else (lambda line: print(line, flush=True))
    trainer = Trainer(config, checkpoint=args.checkpoint, resume=args.resume, log=log)
    if log:
        mode = "OIALR" if config.oialr.enabled else "full-rank"
        log(f"training {config.model.name} on {config.data.name} ({mode}): {trainer.total_steps} steps, "
            f"{trainer.steps_per_epoch} per epoch, device {trainer.device}, "
            f"{trainer.oialr.original_parameters:,} parameters")
    try:
        result = trainer.fit()
    except TrainingDiverged as exc:
        print(f"oialr-search train: {exc}", file=sys.stderr)
        return 1
    metrics = result.to_dict()
    summary = {k: metrics[k] for k in ("val_loss", "top1", "top5", "train_seconds", "trainable_fraction",
                                       "compression")}
    print(json.dumps(summary))
    if out is not None:
        write_atomic(out, json.dumps({**metrics, "config": config_to_dict(config)}, indent=2))
        write_atomic(out.with_name(f"{out.stem}.config.yaml"), dump_config(config))
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one run config (OIALR or full-rank baseline)")
    p.add_argument("config", help=f"YAML run config, or a bundled one: {', '.join(bundled_configs())}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set oialr.beta=0.2 (repeatable)")
    p.add_argument("--out", help="write final metrics (JSON) here, and the resolved config next to it")
    p.add_argument("--checkpoint", help="checkpoint file, written after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.set_defaults(func=cmd_train)
