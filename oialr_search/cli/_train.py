"""``oialr-search train``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .._files import output_file, plain_output, unusable_folder
from ..exceptions import OIALRSearchError
from ..storage._paths import a_studys_file
from ..training import bundled_configs
from ._common import write_atomic


def cmd_train(args: argparse.Namespace) -> int:
    from ..training import (
        Trainer,
        TrainingDiverged,
        config_to_dict,
        dump_config,
        load_config,
        resolve_config_path,
        save_weights,
        weights_payload,
    )

    source = resolve_config_path(args.config)
    config = load_config(source, args.set)
    out = Path(args.out) if args.out else None
    # the resolved config beside --out, when --out is a file (not /dev/null or a pipe): decided once
    companion = out.with_name(f"{out.stem}.config.yaml") if out is not None and plain_output(out) else None
    _check_distinct(source, out, args.checkpoint, args.weights, companion)
    for option, value, example in (("--out", out, "metrics.json"), ("--checkpoint", args.checkpoint, "run.ckpt"),
                                   ("--weights", args.weights, "model.pt"),
                                   (f"{companion} (the resolved config beside --out)", companion, "m.config.yaml")):
        if value is not None:
            _check_output(Path(value), option, example)
    plots = None
    if args.plots:  # checked before training, not after it
        from ..plots import check_output_dir

        plots = check_output_dir(args.plots, option="--plots")
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
        if companion is not None:
            write_atomic(companion, dump_config(config))
    if args.weights:  # the trained model, as export --weights writes a trial's: oialr_search.load_model reads it
        save_weights(args.weights, weights_payload(trainer, metrics=summary))
    if plots is not None:
        _write_plots(plots, Path(args.config).stem, metrics)
    return 0


def _check_output(path: Path, option: str, example: str) -> None:
    """An output of train, checked before training (one line, exit 2), not after it."""
    if path.is_dir():
        raise OIALRSearchError(f"{option} {path}: is a folder; give a file name such as {path / example}")
    if not plain_output(path):  # /dev/null, /dev/stdout, a FIFO: written into (see _files.atomic_writer)
        if option == "--checkpoint":  # replaced every epoch, read back by --resume
            raise OIALRSearchError(f"--checkpoint {path}: must be a file (written every epoch, read back by --resume)")
        output_file(path, option=option, example=example, binary=option == "--weights")
        return
    # a link's file is written, in the folder of the link's target
    why = unusable_folder(Path(os.path.realpath(path)).parent if path.is_symlink() else path.parent)
    if why is not None:
        raise OIALRSearchError(f"{option} {path}: cannot be written ({why})")


def _check_distinct(source: Path, out: Path | None, checkpoint: str | None, weights: str | None = None,
                    companion: Path | None = None) -> None:
    """The files train writes (the metrics, the resolved config beside them, the checkpoint) must be files of
    their own, none of them the config being trained (a sweep overwrote the config with the metrics, and the
    checkpoint with the metrics, which a --resume then could not read)."""
    written = []
    if out is not None:
        written.append((out, f"--out {out}"))
    if companion is not None:
        written.append((companion, f"{companion} (the resolved config --out writes beside {out})"))
    if checkpoint:
        written.append((Path(checkpoint), f"--checkpoint {checkpoint}"))
    if weights:
        written.append((Path(weights), f"--weights {weights}"))
    seen = {os.path.realpath(source): f"the config being trained ({source})"}
    for path, what in written:
        kept = a_studys_file(path)
        if kept is not None:  # another search's only copy of a model, or its trial's checkpoint
            raise OIALRSearchError(f"{what}: {kept}; write it elsewhere")
        real = os.path.realpath(path)
        if real in seen:
            raise OIALRSearchError(f"{what}: would write over {seen[real]}; give each a file of its own")
        seen[real] = what


def _write_plots(folder: Path, label: str, metrics: dict) -> None:
    """The run's learning curves and OIALR figures (the same functions as a study's best trials)."""
    from ..plots import run_data, run_figures, write_figures

    figures, notes = run_figures([run_data(label, "COMPLETE", metrics["epochs"], metrics["oialr_updates"])])
    for note in notes:
        print(f"note: {note}")
    for path in write_figures(figures, folder):
        print(path)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one run config (OIALR or full-rank baseline)")
    p.add_argument("config", help=f"YAML run config, or a bundled one: {', '.join(bundled_configs())}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set oialr.beta=0.2 (repeatable)")
    p.add_argument("--out", help="write final metrics (JSON) here, and the resolved config next to it")
    p.add_argument("--checkpoint", help="checkpoint file, written after every epoch")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--weights", metavar="PATH", help="write the trained model here (a weights file, as export "
                                                     "--weights writes; load it with oialr_search.load_model)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    p.add_argument("--plots", metavar="DIR", help="after training, write the run's learning curves, trainable "
                                                  "parameters and Stability, lr and rank heat map (PNG) here")
    p.set_defaults(func=cmd_train)
