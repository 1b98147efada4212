"""How close is the roofline device model to a measured step? On this CPU, per model.

For each model, one training step (forward, backward, optimizer) is recorded op by op
(ddtrain/perf/opcount.py) and its time predicted with ddtrain/perf/roofline.py on this CPU's own
roofs: the matmul peak of the probe (ddtrain/perf/peak.py), the memory bandwidth of a large copy,
and the cost of one tiny op (the dispatcher). The same step is then timed for real, steps
interleaved across models and repeated. Both at one thread, as a worker on a node whose cores
are shared by the ranks.

    python launch/bench_roofline.py                      # mlp, convnet, gpt, prnn; 3 repeats
    python launch/bench_roofline.py --models gpt --repeats 5

Prints a Markdown table: measured and predicted milliseconds per step, the error, and how much
of the predicted time is under the compute roof; with the device, the command and the date.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import platform
import statistics
import sys
import time

import torch

# model -> overrides: each model on the data set it reads, at its YAML's defaults.
WORKLOADS = {
    "mlp": ["model=mlp", "data=synthetic"],
    "convnet": ["model=convnet", "data=synthetic"],
    "gpt": ["model=gpt", "data=synthetic"],
    "prnn": ["model=prnn", "data=speech"],
}


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="timed steps per model per repeat")
    return p.parse_args(argv)


def memory_bandwidth(mib: int = 256, tries: int = 5) -> float:
    """Bytes/s of a large copy (read plus write), the best of a few tries."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(tries):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best


def per_op_cost(count: int = 20000) -> float:
    """Seconds of one op on one-element tensors: what an op costs before it touches data."""
    a, b = torch.ones(1), torch.ones(1)
    t0 = time.perf_counter()
    for _ in range(count):
        torch.add(a, b)
    return (time.perf_counter() - t0) / count


def workload(name: str):
    from ddtrain.cli import compose_config
    from ddtrain.config import from_mapping
    from ddtrain.loss import build_loss
    from ddtrain.optim import build_optimizer
    from ddtrain.trainer import build_datasets, make_model

    cfg = from_mapping(compose_config(WORKLOADS[name]))
    dataset, _ = build_datasets(cfg)
    model = make_model(cfg, dataset.spec)
    x, y = dataset.batch(torch.arange(cfg.data.batch_size))
    optimizer, _ = build_optimizer(cfg.optim, model, 1000)
    return cfg, model, optimizer, build_loss(cfg.loss), x, y


def step(model, optimizer, loss_fn, x, y) -> None:
    loss_fn(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main(argv: list[str] | None = None) -> None:
    from ddtrain.optim import build_optimizer
    from ddtrain.perf.opcount import record_step
    from ddtrain.perf.peak import probe_peak
    from ddtrain.perf.roofline import Roofline, phase_times

    args = parse(argv)
    torch.set_num_threads(1)
    peak = probe_peak(torch.device("cpu"), "fp32")
    device = Roofline("this cpu, 1 thread", peak.flops, memory_bandwidth(), per_op_cost(),
                      source=peak.source)
    loads = {name: workload(name) for name in args.models}
    predicted, bound_only, compute_share = {}, {}, {}
    for name, (cfg, model, optimizer, loss_fn, x, y) in loads.items():
        twin = copy.deepcopy(model)
        records = record_step(twin, x, y, loss_fn, build_optimizer(cfg.optim, twin, 1000)[0]).records
        predicted[name] = sum(phase_times(records, device).values())
        bare = Roofline(device.name, device.matmul_flops, device.memory_Bps)
        bound_only[name] = sum(phase_times(records, bare).values())
        compute_share[name] = sum(bare.op_time(r) for r in records if r.op_class != "view"
                                  and bare.bound(r) == "compute") / bound_only[name]
        step(model, optimizer, loss_fn, x, y)  # warm-up
    measured: dict[str, list[float]] = {name: [] for name in loads}
    for repeat in range(args.repeats):
        order = list(loads) if repeat % 2 == 0 else list(loads)[::-1]
        for name in order:
            _, model, optimizer, loss_fn, x, y = loads[name]
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step(model, optimizer, loss_fn, x, y)
                measured[name].append(time.perf_counter() - t0)
    print(f"Device: {platform.machine()}, {platform.platform()}, torch {torch.__version__}, 1 thread; "
          f"date {_dt.date.today().isoformat()}")
    print(f"Command: python launch/bench_roofline.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"Roofs: matmul {device.matmul_flops / 1e9:.1f} GFLOP/s ({peak.source}); memory "
          f"{device.memory_Bps / 1e9:.1f} GB/s (best 256 MiB copy); {device.per_op_s * 1e6:.1f} us per op "
          f"(one-element add)\n")
    print("| model | batch | measured step, ms: median (min-max) | roofline bound, ms "
          "| roofline + per-op cost, ms | error of roofline + per-op | compute-bound share of the bound |")
    print("|---|---|---|---|---|---|---|")
    for name, (cfg, *_rest) in loads.items():
        times = measured[name]
        med = statistics.median(times)
        spread = f"{min(times) * 1e3:.2f}-{max(times) * 1e3:.2f}"
        print(f"| {name} | {cfg.data.batch_size} | {med * 1e3:.2f} ({spread}) "
              f"| {bound_only[name] * 1e3:.2f} | {predicted[name] * 1e3:.2f} | "
              f"{(predicted[name] / med - 1) * 100:+.0f}% | {compute_share[name] * 100:.0f}% |")


if __name__ == "__main__":
    main()
