#!/usr/bin/env python3
"""Persistent RNN/GRU kernels against torch.nn.RNN/GRU (cuDNN), side by side in one run.

For every (cell, dtype, hidden, minibatch, T) one layer (input size = hidden) is timed both ways
with CUDA events: forward only (no grad), and forward+backward. Reported per row:
  * us per timestep, ours and cuDNN, and their ratio (cuDNN time / ours: > 1 means we are faster);
  * TFLOP/s of the recurrence, counted as 2 * gates * H^2 * B per step forward (gates: RNN 1,
    GRU 3; the input projection and elementwise work are NOT counted), x3 for forward+backward
    (dh recurrence and dW_hh each cost as much as the forward);
  * that rate as a fraction of the device's datasheet peak for the dtype (ddtrain.perf.peak; a
    GPU missing from the table is probed), and which path ran, with its reason.

    python launch/bench_rnn.py                                   # the full grid
    python launch/bench_rnn.py --cells gru --hidden 1024 --batches 4 --steps 256 --dtypes bf16
    python launch/bench_rnn.py --out rnn.json --markdown rnn.md  # keep the results

Needs a CUDA GPU. ``--interpret-smoke`` runs a tiny grid on the CPU in Triton's interpreter with
wall-clock timing (plumbing check only: its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import time

CELLS = ("rnn", "gru")
DTYPES = ("bf16", "fp16", "fp32")


def parse_args(argv=None):
    ints = lambda s: [int(v) for v in s.split(",")]
    words = lambda allowed: lambda s: _choices(s, allowed)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", type=words(CELLS), default=list(CELLS))
    ap.add_argument("--dtypes", type=words(DTYPES), default=list(DTYPES))
    ap.add_argument("--hidden", type=ints, default=[512, 1024, 1152, 2048])
    ap.add_argument("--batches", type=ints, default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--steps", type=ints, default=[64, 256], help="sequence lengths T")
    ap.add_argument("--nonlinearity", choices=("tanh", "relu"), default="tanh", help="for the plain RNN")
    ap.add_argument("--path", default="auto", help="our path: auto | persistent | stepwise")
    ap.add_argument("--mm", choices=("fma", "dot"), default="fma",
                    help="in-kernel matmul: fma (CUDA cores, by row) | dot (tensor cores, batch padded)")
    ap.add_argument("--reps", type=int, default=20, help="timed repetitions per point (median kept)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", help="write all rows as JSON here")
    ap.add_argument("--markdown", help="write the table as markdown here")
    ap.add_argument("--interpret-smoke", action="store_true", help="tiny CPU run in Triton's interpreter")
    return ap.parse_args(argv)


def _choices(text: str, allowed) -> list[str]:
    values = text.split(",")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"{','.join(bad)} not in {','.join(allowed)}")
    return values


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.interpret_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before ddtrain.kernels imports Triton
        args.hidden, args.batches, args.steps, args.reps, args.warmup = [12], [2], [3], 1, 0
        if args.path == "auto":  # auto means the reference loop on CPU; the point is the kernels
            args.path = "persistent"
    import torch

    if not args.interpret_smoke and not torch.cuda.is_available():
        print("bench_rnn: needs a CUDA GPU (none visible); run it on a GPU machine, or use "
              "--interpret-smoke to check the script on CPU", file=sys.stderr)
        return 2
    from ddtrain.kernels.persistent_rnn import TRITON_REASON
    if TRITON_REASON:
        print(f"bench_rnn: Triton does not import ({TRITON_REASON}); pip install triton", file=sys.stderr)
        return 2

    device = torch.device("cpu" if args.interpret_smoke else "cuda")
    header = describe(torch, device, argv)
    print("\n".join(header))
    rows = []
    for cell in args.cells:
        for dtype in args.dtypes:
            peak = peak_for(device, dtype)
            for hidden in args.hidden:
                for T in args.steps:
                    for batch in args.batches:
                        row = measure(torch, device, cell, dtype, hidden, batch, T, args, peak)
                        rows.append(row)
                        print(format_row(row), flush=True)
    table = markdown(header, rows)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    return 0


def describe(torch, device, argv) -> list[str]:
    import triton

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor()})"
    command = "python launch/bench_rnn.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    return [
        f"device: {name}",
        f"torch {torch.__version__}, triton {triton.__version__}, cuDNN "
        f"{torch.backends.cudnn.version() if device.type == 'cuda' else '-'}"
        f" (cudnn.allow_tf32={torch.backends.cudnn.allow_tf32})",
        f"command: {command}",
        f"date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
    ]


def peak_for(device, dtype: str):
    """The datasheet peak of this GPU for ``dtype`` (tensor-core rate for bf16/fp16, plain fp32
    for fp32: our kernels do not use TF32). Probed if the GPU is not in the table."""
    import torch

    from ddtrain.perf.peak import PEAK_TABLE, match_device, probe_peak, table_peak

    if device.type != "cuda":
        return None
    key = match_device(torch.cuda.get_device_name(device))
    if key is not None and dtype in PEAK_TABLE[key].tflops:
        return table_peak(key, dtype)
    return probe_peak(device, dtype)


def measure(torch, device, cell, dtype_name, hidden, batch, T, args, peak) -> dict:
    from torch import nn

    from ddtrain.kernels.persistent_rnn import PersistentGRU, PersistentRNN
    from ddtrain.perf.mfu import ImpossibleMeasurement, fraction_of_peak

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    kw = {} if cell == "gru" else {"nonlinearity": args.nonlinearity}
    theirs = (nn.GRU if cell == "gru" else nn.RNN)(hidden, hidden, **kw).to(device, dtype)
    make = PersistentGRU if cell == "gru" else PersistentRNN
    ours = make(hidden, hidden, path=args.path, mm=args.mm, **kw)
    ours = ours.to(device, dtype)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(T, batch, hidden, device=device, dtype=dtype)
    row = dict(cell=cell, dtype=dtype_name, hidden=hidden, batch=batch, T=T)
    gates = 3 if cell == "gru" else 1
    flops_fwd = 2 * gates * hidden**2 * batch * T
    for mode, flops in (("fwd", flops_fwd), ("fwdbwd", 3 * flops_fwd)):
        try:
            t_ours = time_it(torch, device, ours, x, mode, args)
            row["path"], row["reason"] = ours.last_plan.path, ours.last_plan.reason
            t_cudnn = time_it(torch, device, theirs, x, mode, args)
        except (RuntimeError, ValueError) as exc:  # e.g. out of memory, a refused plan
            row[f"{mode}_error"] = str(exc).splitlines()[0]
            continue
        row[f"{mode}_us_per_step"] = 1e6 * t_ours / T
        row[f"{mode}_cudnn_us_per_step"] = 1e6 * t_cudnn / T
        row[f"{mode}_speedup"] = t_cudnn / t_ours
        row[f"{mode}_tflops"] = flops / t_ours / 1e12
        row[f"{mode}_cudnn_tflops"] = flops / t_cudnn / 1e12
        if peak is not None:
            for who, t in (("", t_ours), ("cudnn_", t_cudnn)):
                try:
                    row[f"{mode}_{who}frac_peak"] = fraction_of_peak(flops / t, peak)
                except ImpossibleMeasurement as exc:
                    row[f"{mode}_{who}frac_peak_error"] = str(exc)
    row["peak"] = peak.label if peak is not None else "not measured (CPU smoke)"
    return row


def time_it(torch, device, module, x, mode: str, args) -> float:
    """Median seconds of one call (forward, or forward + backward of sum(out))."""

    def once():
        if mode == "fwd":
            with torch.no_grad():
                module(x)
        else:
            module.zero_grad(set_to_none=True)
            out, _ = module(x.requires_grad_(False))
            out.float().sum().backward()

    for _ in range(args.warmup):
        once()
    samples = []
    for _ in range(args.reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            once()
            end.record()
            end.synchronize()  # the one host sync per sample, on purpose
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            once()
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


COLUMNS = [
    ("cell", "{}"), ("dtype", "{}"), ("hidden", "{}"), ("batch", "{}"), ("T", "{}"), ("path", "{}"),
    ("fwd_us_per_step", "{:.2f}"), ("fwd_cudnn_us_per_step", "{:.2f}"), ("fwd_speedup", "{:.2f}"),
    ("fwd_tflops", "{:.3f}"), ("fwd_frac_peak", "{:.4f}"),
    ("fwdbwd_us_per_step", "{:.2f}"), ("fwdbwd_cudnn_us_per_step", "{:.2f}"), ("fwdbwd_speedup", "{:.2f}"),
    ("fwdbwd_tflops", "{:.3f}"), ("fwdbwd_frac_peak", "{:.4f}"),
]


def _cell(row, key, fmt):
    value = row.get(key)
    return "n/a" if value is None else fmt.format(value)


def format_row(row) -> str:
    errors = [f"{k}={v}" for k, v in row.items() if k.endswith("error")]
    text = " ".join(f"{k}={_cell(row, k, f)}" for k, f in COLUMNS)
    return " ".join([text, *errors])


def markdown(header, rows) -> str:
    lines = [f"- {h}" for h in header] + ["", "| " + " | ".join(k for k, _ in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, k, f) for k, f in COLUMNS) + " |")
    # every row's path and reason, once per distinct choice
    reasons = sorted({(r["cell"], r["dtype"], r["hidden"], r.get("path"), r.get("reason")) for r in rows})
    lines += ["", "Paths chosen:"] + [f"- {c} {d} H={h}: {p} ({why})" for c, d, h, p, why in reasons]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
