"""The GPU paths, checked on one node: the one command to run on a GPU machine (DESIGN.md §8).

    python bench/gpu.py [--ranks N] [--batch 256] [--vit-batch 64] [--rounds 5] [--steps 5] [--parts 1,2,3,4,5,6]
                        [--compile-mode default]
    python bench/gpu.py --device cpu --smoke     (tiny sizes: checks that the script runs)

Prints, side by side in one run (medians of interleaved rounds, the device synchronized around
every timed region):
  1. placement: N ranks under the venv's mpiexec (else the one on PATH), each rank's device and
     threads (distinct GPUs);
  2. precision: fp32 vs bf16 (and fp16) step time of the paper's Table-3 CIFAR-10 mini-ViT
     (patch 8, depth 6, heads 6, width 768, 32 px) and the bf16 speed-up, with peak memory, beside
     the same step in a plain PyTorch loop (what the trainer's own loop costs);
  3. OIALR vs full rank at forced ranks (every factor cut to a fraction of its full rank), for the
     Table-3 model and ViT-B/16 at 224 px, in the default precision: step-time ratio, trainable
     fraction and the FLOP ratio of the factorized layers, as bench/trainer.py does on CPU, and at
     10 % the same ranks without padding them to a multiple of 8 for tensor cores;
  4. the SVD-update share: one OIALR update of every layer at full rank, against the training time
     between two updates at the bundled recipe's update frequency;
  5. the cost model: for every factor shape of part 3, whether ``use_factorized`` picks the faster
     of the layer's dense and factorized products on this device (forward + backward; on a GPU by
     the kernels' time);
  6. train.compile: the Table-3 model's training step eager and compiled (``--compile-mode``), fp32
     and bf16 at full rank and bf16 at 10 % rank, with the seconds the first two compiled steps took
     (the compile); then what a scheduled OIALR update adds to the steps (SVDs, rotations and under
     train.compile any recompile or CUDA-graph recording), with the recipe's beta and layer fraction,
     as a share of training time at the recipe's update frequency.
"GPU busy" is the share of the wall time the GPU spends in kernels (from the profiler): far below
100 %, the host (Python, kernel launches) sets the pace, and a faster kernel changes nothing.
Synthetic images (no data set is read); the numbers are the training step's, not the loader's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer import flop_ratio, force_ranks  # noqa: E402

from oialr_search.training import Trainer, _compile, config_from_dict, load_config, resolve_config_path  # noqa: E402
from oialr_search.training._config import COMPILE_MODES  # noqa: E402
from oialr_search.training._data import DataBundle  # noqa: E402

# The paper's models (Table 3 and Table 1), updated as their bundled recipes say (part 4 reads the
# recipe's oialr.update_frequency); --smoke shrinks them to seconds on a CPU.
MODELS = {
    "table3-mini-vit": {"model": {"name": "mini_vit", "kwargs": {"embed_dim": 768, "depth": 6, "num_heads": 6,
                                                                 "patch_size": 8}},
                        "img": 32, "classes": 10, "recipe": "cifar10_mini_vit"},
    "vit-b16": {"model": {"name": "vit_base_patch16_224", "kwargs": {}}, "img": 224, "classes": 1000,
                "recipe": "imagenet_vit_b16"},
}
SMOKE = {
    "table3-mini-vit": {"model": {"name": "mini_vit", "kwargs": {"embed_dim": 48, "depth": 2, "num_heads": 2,
                                                                 "patch_size": 8}},
                        "img": 32, "classes": 10, "update_frequency": 50},
    "vit-b16": {"model": {"name": "mini_vit", "kwargs": {"embed_dim": 48, "depth": 2, "num_heads": 2,
                                                         "patch_size": 16}},
                "img": 64, "classes": 20, "update_frequency": 50},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def update_frequency(spec: dict) -> int:
    if "recipe" in spec:  # the shipped file's value, so part 4 follows it
        return load_config(resolve_config_path(spec["recipe"])).oialr.update_frequency
    return spec["update_frequency"]


def make_trainer(spec: dict, *, device: str, batch: int, precision: str, oialr: bool, compile: str = "none",
                 schedule: dict | None = None) -> Trainer:
    """A trainer on synthetic images; ``oialr`` without ``schedule``: no event until the ranks are forced."""
    events = schedule or {"delay": 10**9 if oialr else 0.1, "update_frequency": update_frequency(spec)}
    cfg = config_from_dict({
        "model": spec["model"],
        "data": {"name": "digits"},  # replaced by the synthetic bundle below
        "train": {"epochs": 1, "batch_size": batch, "device": device, "precision": precision, "seed": 0,
                  "compile": compile},
        "oialr": {"enabled": oialr, **events},
    })
    n, img = 2 * batch, spec["img"]
    images, labels = torch.randn(n, 3, img, img), torch.randint(0, spec["classes"], (n,))
    bundle = DataBundle(TensorDataset(images, labels), TensorDataset(images[:batch], labels[:batch]),
                        spec["classes"], 3, img)
    return Trainer(cfg, log=None, data=bundle)


def batch_on_device(t: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(t.train_batches.epoch(0))
    return x.to(t.device), y.to(t.device)


def time_interleaved(fns: dict[str, Callable[[], None]], device: torch.device, rounds: int,
                     steps: int) -> dict[str, float]:
    """Median seconds per call of each fn, timed in interleaved rounds after two warm-up calls."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_memory(device: torch.device, fn: Callable[[], None]) -> str:
    if device.type != "cuda":
        return "-"
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


class Kernels(NamedTuple):
    """What the GPU ran per call of a function: kernel (and copy) seconds, and how many were launched."""

    seconds: float
    launches: float
    by_kind: dict[str, float]  # kernel seconds per call by what they compute (see kernel_kind)


KINDS = ("matmul", "attention", "copy", "other")


def kernel_kind(name: str) -> str:
    """What a GPU kernel computes, from its name: matrix products (cuBLAS, CUTLASS, inductor's mm
    templates), attention, copies (memcpy/memset and eager copy kernels, casts among them), or the rest
    (elementwise work, norms, reductions, the optimizer). Inductor's fused pointwise and reduction
    kernels (triton_poi_, triton_per_, triton_red_) are the rest whatever their names mention: a cast
    or an mm fused into them, or attention's elementwise parts."""
    n = name.lower()
    if n.startswith("triton_tem_") and "mm" in n:
        return "matmul"
    if n.startswith(("triton_poi_", "triton_per_", "triton_red_")):
        return "other"
    if any(s in n for s in ("flash", "fmha", "attention", "sdpa")):  # before matmul: fmha_cutlassF_… is attention
        return "attention"
    if any(s in n for s in ("gemm", "xmma", "cutlass", "nvjet", "cublas", "bmm")):
        return "matmul"
    if any(s in n for s in ("memcpy", "memset", "copy_kernel", "arraybatchedcopy")):
        return "copy"
    return "other"


def gpu_profile(device: torch.device, fn: Callable[[], None], calls: int) -> Kernels | None:
    """The GPU's kernels (and copies) per call of fn, from the profiler; None off CUDA.

    Against the wall time per call, their seconds say whether the GPU or the host sets the pace: a step
    whose kernels take far less than its wall time is bound by the host (Python and kernel launches), and
    the launches per step say how much of that the launches alone explain (a few microseconds each)."""
    if device.type != "cuda":
        return None
    fn()
    sync(device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    cuda = torch.autograd.DeviceType.CUDA
    events = [e for e in prof.key_averages() if e.device_type == cuda]
    by_kind: dict[str, float] = {}
    for e in events:
        kind = kernel_kind(e.key)
        by_kind[kind] = by_kind.get(kind, 0.0) + e.self_device_time_total / 1e6 / calls
    return Kernels(sum(e.self_device_time_total for e in events) / 1e6 / calls,
                   sum(e.count for e in events) / calls, by_kind)


def gpu_seconds(device: torch.device, fn: Callable[[], None], calls: int) -> float | None:
    """Seconds of GPU kernels (and copies) per call of fn (see :func:`gpu_profile`); None off CUDA."""
    k = gpu_profile(device, fn, calls)
    return None if k is None else k.seconds


def launches(k: Kernels | None) -> str:
    return "-" if k is None else f"{k.launches:.0f}"


def busy(gpu: float | None, wall: float) -> str:
    return "-" if gpu is None else f"{min(1.0, gpu / wall):.0%}"


# -- 1. placement ---------------------------------------------------------------------------------------

def placement_worker() -> None:
    from mpi4py import MPI

    from oialr_search.search._devices import place

    comm = MPI.COMM_WORLD
    p = place(comm)
    if p.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(p.device))
        current = f"cuda:{torch.cuda.current_device()}"
    else:
        current = "cpu"
    rows = comm.gather({"rank": comm.Get_rank(), "device": p.device, "current": current, "threads": p.threads,
                        "local_rank": p.local_rank, "local_size": p.local_size}, root=0)
    if comm.Get_rank() == 0:
        print("PLACEMENT " + json.dumps(rows), flush=True)


def placement(ranks: int) -> None:
    # The venv's mpiexec (the mpich extra), else the one on PATH (a cluster's own MPI)
    beside = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(beside) if beside.exists() else shutil.which("mpiexec")
    print(f"\n== 1. Placement: {ranks} ranks under {mpiexec or 'mpiexec'}")
    if mpiexec is None:
        print("  skipped: no mpiexec beside this Python or on PATH (pip install mpich, or load your MPI module)")
        return
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", __file__, "--placement-worker"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        print("  failed: the ranks did not finish within 600 s")
        return
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PLACEMENT ")), None)
    if line is None:
        print(f"  failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
        return
    rows = json.loads(line[len("PLACEMENT "):])
    for r in rows:
        print(f"  rank {r['rank']} (local {r['local_rank']}/{r['local_size']}): {r['device']}, current device "
              f"{r['current']}, {r['threads']} threads")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    used = [r["device"] for r in rows]
    if gpus:
        distinct = len(set(used)) == min(ranks, gpus)
        print(f"  {len(set(used))} distinct GPUs for {ranks} ranks on {gpus} GPUs: {'ok' if distinct else 'WRONG'}")


# -- 2. precision -----------------------------------------------------------------------------------------

def plain_step(t: Trainer) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """A plain PyTorch step on a fresh copy of ``t``'s model, as timm's train.py --amp takes it (fused
    AdamW, autocast, the same loss and clipping): what the trainer's own loop costs shows against it."""
    from oialr_search.training import create_model

    cfg = t.config
    model = create_model(cfg.model.name, num_classes=t.data.num_classes, in_chans=t.data.in_chans,
                         img_size=t.data.img_size, **cfg.model.kwargs).to(t.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                            fused=t.device.type == "cuda" or None)
    amp = t.precision

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with amp.autocast():
            loss = F.cross_entropy(model(x), y, label_smoothing=cfg.train.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip, foreach=True)
        opt.step()

    return step


def precision(spec: dict, device: str, batch: int, rounds: int, steps: int) -> None:
    variants: dict[str, Trainer] = {}
    fns = {}
    for name in ("fp32", "bf16", "fp16"):
        t = make_trainer(spec, device=device, batch=batch, precision=name, oialr=False)
        x, y = batch_on_device(t)
        variants[name] = t
        fns[name] = (lambda t=t, x=x, y=y: t.train_step(x, y))
    for name in ("fp32", "bf16"):  # the same step without the trainer around it
        t = variants[name]
        x, y = batch_on_device(t)
        step = plain_step(t)
        fns[f"plain {name}"] = (lambda step=step, x=x, y=y: step(x, y))
    dev = variants["fp32"].device
    times = time_interleaved(fns, dev, rounds, steps)
    print(f"\n== 2. Precision: Table-3 mini-ViT, batch {batch}, full rank (median of {rounds} x {steps} steps; "
          "plain: the same step in a plain PyTorch loop)")
    print(f"{'precision':>10} {'step s':>9} {'images/s':>10} {'vs fp32':>8} {'GPU busy':>9} {'peak memory':>12}")
    for name, fn in fns.items():
        mem = peak_memory(dev, fn)
        gpu = gpu_seconds(dev, fn, steps)
        print(f"{name:>10} {times[name]:9.4f} {batch / times[name]:10.0f} {times['fp32'] / times[name]:7.2f}x "
              f"{busy(gpu, times[name]):>9} {mem:>12}")
    print(f"bf16 speed-up over fp32: {times['fp32'] / times['bf16']:.2f}x (plain loop: "
          f"{times['plain fp32'] / times['plain bf16']:.2f}x); trainer vs plain loop, bf16: "
          f"{times['bf16'] / times['plain bf16']:.2f}x the step time")


# -- 3. OIALR vs full rank, 5. the cost model ------------------------------------------------------------------

def forced_ranks(label: str, spec: dict, device: str, batch: int, rounds: int, steps: int,
                 fractions: list[float]) -> list[tuple[int, int, int, int]]:
    """Prints part 3 for one model; returns the (m, n, r, tokens) of every factor it timed."""
    variants = {"full-rank": make_trainer(spec, device=device, batch=batch, precision="auto", oialr=False)}

    def at(fraction: float, **factor_settings: object) -> Trainer:
        """A trainer at forced ranks, with ``factor_settings`` set on every factor."""
        t = make_trainer(spec, device=device, batch=batch, precision="auto", oialr=True)
        force_ranks(t, fraction)
        for _, f in t.oialr.factors:
            for key, value in factor_settings.items():
                setattr(f, key, value)
        return t

    for frac in fractions:
        variants[f"rank {frac:.0%}"] = at(frac)
    if 0.1 in fractions and torch.device(device).type == "cuda":  # the same ranks unpadded (off CUDA: none is)
        variants["10% unpadded"] = at(0.1, align=1)
    if 0.1 in fractions:  # the same ranks with Σ merged into one side (the cost rule sets it apart)
        variants["10% Σ merged"] = at(0.1, sigma_placement="merged")
    full = variants["full-rank"]
    x, y = batch_on_device(full)
    model = full.model
    per_image = model.patch_embed.num_patches + getattr(model, "num_prefix_tokens", 0) \
        if hasattr(model, "patch_embed") else 1
    tokens = x.shape[0] * per_image
    fns = {name: (lambda t=t: t.train_step(x, y)) for name, t in variants.items()}
    times = time_interleaved(fns, full.device, rounds, steps)
    print(f"\n== 3. OIALR vs full rank at forced ranks: {label}, batch {batch}, {full.precision.name}, "
          f"{tokens} tokens (median of {rounds} x {steps} steps)")
    print(f"{'variant':>12} {'step s':>9} {'ratio':>7} {'trainable':>10} {'FLOP ratio':>11} {'GPU busy':>9} "
          f"{'GPU ratio':>9} {'kernels':>8} {'peak memory':>12}")
    shapes = set()
    prof = {name: gpu_profile(full.device, fn, steps) for name, fn in fns.items()}
    gpu = {name: None if k is None else k.seconds for name, k in prof.items()}
    for name, t in variants.items():
        ratio = times[name] / times["full-rank"]
        trainable = t.oialr.counts().trainable_fraction
        flops = flop_ratio(t.oialr.factors, tokens, t.device) if t.oialr.factors else 1.0
        mem = peak_memory(t.device, lambda t=t: t.train_step(x, y))
        gpu_ratio = "-" if gpu[name] is None else f"{gpu[name] / gpu['full-rank']:.3f}"
        print(f"{name:>12} {times[name]:9.4f} {ratio:7.3f} {100 * trainable:9.1f}% {flops:11.3f} "
              f"{busy(gpu[name], times[name]):>9} {gpu_ratio:>9} {launches(prof[name]):>8} {mem:>12}")
        shapes |= {(f.out_features, f.in_features, f.rank, tokens) for _, f in t.oialr.factors}
    return sorted(shapes)


def cost_model(shapes: list[tuple[int, int, int, int]], device: str, rounds: int, steps: int) -> None:
    """Times the layer's dense path (build W, one product) against its factorized one (two products,
    the rank padded for tensor cores on CUDA) and the factorized one unpadded, forward + backward.

    On a GPU the kernels' time decides: launched alone, every product's wall time is its launch cost,
    which says nothing about a training step where the GPU is busy (the step's GPU-busy share, part 3)."""
    from oialr_search.lowrank import LowRankWeight
    from oialr_search.training._precision import Precision
    from oialr_search.training._trainer import resolve_device

    dev = resolve_device(device)
    amp = Precision("auto", dev)
    agree, rows = 0, []
    for m, n, r, tokens in shapes:
        x = torch.randn(tokens, n, device=dev, requires_grad=True)
        f = LowRankWeight(torch.randn(m, n, device=dev))
        f.rotate_(beta=1.0, min_rank=r)  # rank r exactly
        chose = f.use_factorized(tokens, align=f.alignment(dev))

        def run(mode: str, align: int | None, f=f, x=x) -> Callable[[], None]:
            def product() -> None:
                f.forward_mode, f.align = mode, align
                with amp.autocast():
                    out = f.linear(x, None)
                out.sum().backward()
            return product

        fns = {"dense": run("dense", None), "factorized": run("factorized", None)}
        if dev.type == "cuda":  # the kernels' time: the wall time of one product is mostly its launches
            fns["unpadded"] = run("factorized", 1)  # (off CUDA nothing is padded)
            t = {name: gpu_seconds(dev, fn, steps) for name, fn in fns.items()}
        else:
            t = time_interleaved(fns, dev, rounds, steps)
        faster = t["factorized"] < t["dense"]
        agree += chose == faster
        rows.append((m, n, r, tokens, t["dense"], t["factorized"], t.get("unpadded"), chose, faster))
    timed = "GPU kernel time" if dev.type == "cuda" else "wall time"
    print(f"\n== 5. Cost model on {dev} ({amp.name}): does use_factorized pick the faster product? ({timed} of "
          "forward + backward; unpadded: the factorized product without the rank padded to a multiple of 8)")
    print(f"{'m x n':>12} {'rank':>5} {'tokens':>7} {'dense s':>9} {'factor. s':>9} {'unpadded':>9} {'picks':>10} "
          f"{'faster':>10}")
    for m, n, r, tokens, d, fa, un, chose, faster in rows:
        mark = "" if chose == faster else "  <- wrong"
        unpadded = "-" if un is None else f"{un:9.5f}"
        print(f"{f'{m}x{n}':>12} {r:5d} {tokens:7d} {d:9.5f} {fa:9.5f} {unpadded:>9} "
              f"{'factorized' if chose else 'dense':>10} {'factorized' if faster else 'dense':>10}{mark}")
    worst = max(((min(d, fa) and max(d, fa) / min(d, fa)) for *_, d, fa, _, c, fst in rows if c != fst), default=1.0)
    print(f"right choice for {agree}/{len(rows)} shapes; the worst wrong choice costs {worst:.2f}x "
          "(calibrate LowRankWeight.use_factorized for this device if that is large)")


# -- 4. SVD-update share --------------------------------------------------------------------------------------

def svd_share(label: str, spec: dict, device: str, batch: int, rounds: int, steps: int) -> None:
    t = make_trainer(spec, device=device, batch=batch, precision="auto", oialr=True)
    x, y = batch_on_device(t)
    step = time_interleaved({"step": lambda: t.train_step(x, y)}, t.device, rounds, steps)["step"]
    t.oialr.switch(t.step)
    t.oialr.config.layer_fraction = 1.0  # every layer, at full rank: the most expensive update
    times = []
    for _ in range(max(1, rounds)):
        sync(t.device)
        start = time.perf_counter()
        t.oialr.update(t.step)
        sync(t.device)
        times.append(time.perf_counter() - start)
        t.train_step(x, y)
    update = statistics.median(times)
    f = update_frequency(spec)
    print(f"\n== 4. SVD updates: {label}, {len(t.oialr.factors)} layers at full rank")
    print(f"one update of every layer: {update:.4f}s; one full-rank step: {step:.4f}s; every {f} steps the "
          f"updates take {100 * update / (update + f * step):.2f}% of training time")


# -- 6. train.compile -------------------------------------------------------------------------------------------

def low_precision(device: str) -> str:
    dev = torch.device(device)
    return "bf16" if dev.type != "cuda" or torch.cuda.is_bf16_supported() else "fp16"


def compiled(spec: dict, device: str, batch: int, rounds: int, steps: int, mode: str) -> None:
    """Eager against compiled: fp32 and bf16 at full rank (the speed-up of bf16 once the host no longer
    sets the pace) and bf16 at 10 % rank (the OIALR step's ratio), then what a scheduled update costs."""
    low = low_precision(device)
    kinds = [("fp32 full-rank", "fp32", None), (f"{low} full-rank", low, None), (f"{low} rank 10%", low, 0.1)]
    variants: dict[str, Trainer] = {}
    for label, prec, fraction in kinds:
        for how in ("none", mode):
            t = make_trainer(spec, device=device, batch=batch, precision=prec, oialr=fraction is not None,
                             compile=how)
            if fraction is not None:
                force_ranks(t, fraction)
                t.compiler.shapes_changed(t.model)  # as the trainer does after an OIALR event
            variants[f"{label} {'eager' if how == 'none' else 'compiled'}"] = t
    full = variants["fp32 full-rank eager"]
    x, y = batch_on_device(full)
    fns = {name: (lambda t=t: t.train_step(x, y)) for name, t in variants.items()}
    first: dict[str, float] = {}
    for name, fn in fns.items():  # the compile happens in the first calls
        sync(full.device)
        start = time.perf_counter()
        fn()
        fn()
        sync(full.device)
        first[name] = time.perf_counter() - start
        print(f"  part 6: {name}: first 2 steps {first[name]:.1f}s", file=sys.stderr, flush=True)
    times = time_interleaved(fns, full.device, rounds, steps)
    print(f"\n== 6. train.compile ({_compile.BACKEND}, mode {mode}): Table-3 mini-ViT, batch {batch} "
          f"(median of {rounds} x {steps} steps)")
    print(f"{'variant':>26} {'step s':>9} {'images/s':>10} {'vs eager':>9} {'GPU busy':>9} {'kernels':>8} "
          f"{'first 2 steps s':>16}")
    kernels: dict[str, Kernels | None] = {}
    for name, fn in fns.items():
        eager = times[name.replace("compiled", "eager")]
        k = kernels[name] = gpu_profile(full.device, fn, steps)
        print(f"{name:>26} {times[name]:9.4f} {batch / times[name]:10.0f} {eager / times[name]:8.2f}x "
              f"{busy(None if k is None else k.seconds, times[name]):>9} {launches(k):>8} {first[name]:16.1f}")
    if all(k is not None for k in kernels.values()):  # where the kernel time goes (what rank 10 % saves)
        print(f"kernel ms per step by kind: {'variant':>26} " + " ".join(f"{kind:>9}" for kind in KINDS))
        for name, k in kernels.items():
            print(f"{'':>28}{name:>26} " + " ".join(f"{1e3 * k.by_kind.get(kind, 0.0):9.2f}" for kind in KINDS))
    for how in ("eager", "compiled"):
        fp32, full_low = times[f"fp32 full-rank {how}"], times[f"{low} full-rank {how}"]
        ratio = times[f"{low} rank 10% {how}"] / full_low
        print(f"{how:>8}: {low} speed-up over fp32 {fp32 / full_low:.2f}x; rank 10% / full rank ({low}) {ratio:.3f}")
    variants.clear()  # free the device before the update runs
    for how in ("none", mode):
        update_cost(spec, device, batch, low, how)


def update_cost(spec: dict, device: str, batch: int, precision: str, how: str, updates: int = 4,
                frequency: int = 25) -> None:
    """What a scheduled OIALR update costs on top of the steps, with the recipe's beta and layer fraction:
    the SVDs and rotations, and under train.compile whatever a rank change recompiles or re-records.
    Each update is timed as the step that ran it plus the step after it, less two median steps (of the
    steps without an update), over ``updates`` updates ``frequency`` steps apart."""
    recipe = load_config(resolve_config_path(spec["recipe"])).oialr if "recipe" in spec else None
    schedule = {"delay": 0, "update_frequency": frequency}
    if recipe is not None:
        schedule |= {"beta": recipe.beta, "layer_fraction": recipe.layer_fraction}
    t = make_trainer(spec, device=device, batch=batch, precision=precision, oialr=True, compile=how,
                     schedule=schedule)
    x, y = batch_on_device(t)
    for _ in range(frequency + 3):  # the switch, the low-rank graph's compile and the first update
        t.train_step(x, y)
    graphs = _unique_graphs()
    records, changed, seconds = len(t.oialr.records), 0, []
    for _ in range(updates * frequency + 1):
        before = [f.rank for _, f in t.oialr.factors]
        sync(t.device)
        start = time.perf_counter()
        t.train_step(x, y)
        sync(t.device)
        seconds.append(time.perf_counter() - start)
        changed += sum(a != f.rank for a, (_, f) in zip(before, t.oialr.factors, strict=True))
    events = t.oialr.records[records:]
    at = [r.step - (t.step - len(seconds)) for r in events]  # the timed steps that ran an update
    step = statistics.median(s for i, s in enumerate(seconds) if i not in at and i - 1 not in at)
    costs = [seconds[i] + seconds[i + 1] - 2 * step for i in at if i + 1 < len(seconds)]
    per_update = statistics.mean(costs)
    f = update_frequency(spec)
    share = 100 * per_update / (per_update + f * step)
    label = "eager" if how == "none" else f"compiled ({how})"
    graphs_note = "" if how == "none" else f"; graphs compiled meanwhile: {_unique_graphs() - graphs}"
    layers = sorted(len(r.updated) for r in events)
    print(f"updates, {label}, {precision}: {len(costs)} updates (beta {t.config.oialr.beta}, layer fraction "
          f"{t.config.oialr.layer_fraction}: {layers[0]}-{layers[-1]} of {len(t.oialr.factors)} layers each), "
          f"{changed} rank changes{graphs_note}; step {step:.4f}s, each update {per_update:.3f}s more "
          f"({min(costs):.3f}-{max(costs):.3f}); every {f} steps (the recipe) that is {share:.2f}% of training time "
          f"(trainable now {100 * t.oialr.counts().trainable_fraction:.1f}%)")


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--placement-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--ranks", type=int, default=None, help="ranks for the placement check (default: the GPUs)")
    ap.add_argument("--batch", type=int, default=256, help="Table-3 model batch (the paper: 256 per GPU)")
    ap.add_argument("--vit-batch", type=int, default=64, help="ViT-B/16 batch")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5, help="steps per variant per round")
    ap.add_argument("--fractions", default="1.0,0.5,0.25,0.1,0.05")
    ap.add_argument("--smoke", action="store_true", help="tiny models and batches: check that the script runs")
    ap.add_argument("--parts", default="1,2,3,4,5,6",
                    help="which parts to run, e.g. 2,3 (part 5 times part 3's shapes)")
    ap.add_argument("--compile-mode", default="default", choices=[m for m in COMPILE_MODES if m != "none"],
                    help="part 6's train.compile (reduce-overhead and max-autotune record CUDA graphs)")
    args = ap.parse_args()
    if args.placement_worker:
        placement_worker()
        return
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: no CUDA device here; run it on a GPU node (or --device cpu --smoke to check it runs)")
    models = SMOKE if args.smoke else MODELS
    if args.smoke:
        args.batch, args.vit_batch, args.rounds, args.steps = 8, 4, 1, 1
        _compile.BACKEND = "aot_eager"  # the same graphs without generating code (minutes on a CPU)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    name = torch.cuda.get_device_name() if gpus else "cpu"
    print(f"torch {torch.__version__}, device {args.device} ({name}), {gpus} GPU(s), "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    try:
        parts = {int(p) for p in args.parts.split(",")}
    except ValueError:
        parts = set()
    if not parts or not parts <= {1, 2, 3, 4, 5, 6}:
        sys.exit(f"bench/gpu.py: --parts takes part numbers from 1 to 6 such as 2,3, got {args.parts!r}")
    if 1 in parts:
        placement(args.ranks or max(1, gpus) if not args.smoke else 2)
    if 2 in parts:
        precision(models["table3-mini-vit"], args.device, args.batch, args.rounds, args.steps)
    fractions = [float(f) for f in args.fractions.split(",")]
    if parts & {3, 5}:
        shapes = forced_ranks("Table-3 mini-ViT", models["table3-mini-vit"], args.device, args.batch, args.rounds,
                              args.steps, fractions)
        shapes += forced_ranks("ViT-B/16", models["vit-b16"], args.device, args.vit_batch, args.rounds, args.steps,
                               fractions)
    if 4 in parts:
        for label, key, batch in (("Table-3 mini-ViT", "table3-mini-vit", args.batch),
                                  ("ViT-B/16", "vit-b16", args.vit_batch)):
            svd_share(label, models[key], args.device, batch, args.rounds, args.steps)
    if 5 in parts:
        cost_model(sorted(set(shapes)), args.device, args.rounds, max(3, args.steps))
    if 6 in parts:
        compiled(models["table3-mini-vit"], args.device, args.batch, args.rounds, args.steps, args.compile_mode)


if __name__ == "__main__":
    main()
