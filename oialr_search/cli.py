"""The ``oialr-search`` command line.

Exit codes: 0 success, 2 bad input (one line that says what to fix), 1 internal failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .exceptions import OIALRSearchError

CONFIG_DIR = Path(__file__).parent / "configs"


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config_path(name: str) -> Path:
    """A path, or the name of a config shipped with the package (e.g. ``mnist_vit``)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml") or os.sep in name:
        return path
    bundled = CONFIG_DIR / f"{name}.yaml"
    if bundled.exists():
        return bundled
    raise OIALRSearchError(f"{name}: no such config file or bundled config (bundled: {', '.join(bundled_configs())})")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainingDiverged, dump_config, load_config
    from .training._trainer import Trainer

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
        from .training import config_to_dict

        _write_atomic(out, json.dumps({**metrics, "config": config_to_dict(config)}, indent=2))
        _write_atomic(out.with_name(f"{out.stem}.config.yaml"), dump_config(config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oialr-search", description="OIALR training and hyperparameter search.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one run config (OIALR or full-rank baseline)")
    p.add_argument("config", help=f"YAML run config, or a bundled one: {', '.join(bundled_configs())}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set oialr.beta=0.2 (repeatable)")
    p.add_argument("--out", help="write final metrics (JSON) here, and the resolved config next to it")
    p.add_argument("--checkpoint", help="checkpoint file, written after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except OIALRSearchError as exc:
        print(f"oialr-search {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"oialr-search {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
