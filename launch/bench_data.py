"""How long does a step wait for its data when samples are decoded from image files? Measured.

An image folder of real PNG and JPEG files is drawn first (noisy pictures, so decoding costs
what it costs on photographs of that size). Then ``ddtrain model=convnet data=images`` runs under
``mpirun -np RANKS`` with ``data.workers=0`` (each rank decodes its own batch, in the step) and
with ``data.workers=K`` (loader processes decode ahead), the two settings interleaved, each
repeated. From each run's ``metrics.jsonl``: the median over measured steps of ``data_s`` (the
time the step waited for its batch) and of the step time, and their ratio.

    python launch/bench_data.py                                  # 2 ranks, K=1, 3 repeats
    python launch/bench_data.py --workers 2 --repeats 5 --images 800 --size 256

Prints a Markdown table with medians and spreads (min-max over repeats), the device, the
command and the date. Goal: with workers, the data wait is under 5% of the step.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="loader processes per rank in the second setting")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--images", type=int, default=600, help="files in the folder (half PNG, half JPEG)")
    p.add_argument("--size", type=int, default=160, help="side of the stored pictures, pixels")
    p.add_argument("--image-size", type=int, default=64, help="data.image_size: the crops the model sees")
    p.add_argument("--batch", type=int, default=16, help="data.batch_size per rank")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of the medians")
    args = p.parse_args(argv)
    if args.steps <= args.warmup:
        sys.exit(f"bench_data: --steps {args.steps} must exceed --warmup {args.warmup}")
    return args


def draw_folder(root: Path, count: int, size: int, classes: int = 4) -> Path:
    """``count`` pictures in ``classes`` subfolders: a class colour, a gradient and pixel noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size)[None, :, None]
    for i in range(count):
        label = i % classes
        base = np.array([(label * 67) % 256, (label * 131) % 256, (label * 197) % 256], dtype=float)
        pixels = base * ramp + rng.normal(0, 40, (size, size, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / (f"{i:05d}.png" if i % 2 else f"{i:05d}.jpg"), quality=90)
    return root


def run(args: argparse.Namespace, folder: Path, workers: int, out: Path) -> dict[str, float]:
    from ddtrain.launcher.mpirun import child_env, console_script, running_as_root
    from ddtrain.launcher.policy import resolve_target

    overrides = ["model=convnet", "model.width=16", "data=images", f"data.root={folder}",
                 f"data.image_size={args.image_size}", f"data.batch_size={args.batch}",
                 f"data.workers={workers}",
                 f"trainer.steps={args.steps}", "trainer.log_every=1", "trainer.progress=false",
                 "trainer.checkpoint=false", "trainer.save_model=false", "tensorboard=false",
                 f"hydra.run.dir={out}"]
    argv = resolve_target("mpirun", environ=os.environ, mpi="openmpi").command(
        args.ranks, [console_script("ddtrain"), *overrides])
    proc = subprocess.run(argv, env=child_env(os.environ, is_root=running_as_root()), capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_data: the run with data.workers={workers} failed:\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("split") != "val"][args.warmup:]
    data = statistics.median(r["data_s"] for r in steps)
    step = statistics.median(r["step_time_s"] for r in steps)
    return {"data_s": data, "step_s": step, "share": data / step}


def spread(values: list[float], scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    med = statistics.median(values) * scale
    return f"{fmt.format(med)} ({fmt.format(min(values) * scale)}-{fmt.format(max(values) * scale)})"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    settings = [0, args.workers]
    results: dict[int, list[dict[str, float]]] = {w: [] for w in settings}
    with tempfile.TemporaryDirectory() as tmp:
        folder = draw_folder(Path(tmp) / "images", args.images, args.size)
        for repeat in range(args.repeats):
            # Interleaved, the order flipped every repeat: drift on a shared machine hits both.
            for workers in settings if repeat % 2 == 0 else settings[::-1]:
                results[workers].append(run(args, folder, workers, Path(tmp) / f"run-{workers}-{repeat}"))
                print(f"repeat {repeat + 1}/{args.repeats}, data.workers={workers}: "
                      f"{results[workers][-1]}", file=sys.stderr, flush=True)
    print(f"Device: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}; "
          f"date {_dt.date.today().isoformat()}")
    print(f"Command: python launch/bench_data.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"{args.ranks} ranks, model=convnet width 16, {args.images} files of {args.size}x{args.size} px "
          f"(half PNG, half JPEG) cropped to {args.image_size}, batch {args.batch} per rank, "
          f"{args.steps - args.warmup} measured steps, {args.repeats} repeats; "
          "median (min-max over repeats)\n")
    print("| data.workers | data wait per step (ms) | step (ms) | data wait / step (%) |")
    print("|---|---|---|---|")
    for workers in settings:
        rows = results[workers]
        print(f"| {workers} | {spread([r['data_s'] for r in rows], 1e3)} | "
              f"{spread([r['step_s'] for r in rows], 1e3)} | {spread([r['share'] for r in rows], 100)} |")


if __name__ == "__main__":
    main()
