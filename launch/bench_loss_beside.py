"""What compute and a collective do to each other on CPU ranks with no spare core. Measured.

The performance model runs a collective that overlaps compute on a core with no spare one at
its calibrated time beside a matmul stream, and takes from the compute the share the stream lost
meanwhile. This checks both on the job's own compute: each rank times its backward (or, with
``--phase forward``, its forward) alone, and with a thread running ``--count`` all-reduces (or,
with ``--op gather``, sharded gathers) of ``--mib`` MiB beside it, the two interleaved
``--repeats`` times (the first of each left out), then the collectives alone as often. Per rank
it reports the medians of the compute alone and beside and of the collectives beside it and
alone, and the share of the compute lost while they were in flight: (beside - alone) / the time
they overlapped.

    python launch/bench_loss_beside.py --config STUDY/node_probe/config.json
    python launch/bench_loss_beside.py --config C --mib 16 --count 3 --repeats 12 --ranks 2
    python launch/bench_loss_beside.py --config C --phase forward --op gather --mib 26 --count 1

``--config`` is a training configuration as a study saves it for its node-sharing probe. The
script starts itself under ``mpirun -np RANKS`` (one thread per rank) and prints one JSON line
per rank with the device, command and date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, required=True, help="a study's node_probe/config.json")
    p.add_argument("--mib", type=float, default=16.0, help="size of each all-reduce, MiB")
    p.add_argument("--count", type=int, default=3, help="all-reduces beside each backward")
    p.add_argument("--repeats", type=int, default=12, help="backwards timed alone and beside, each")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--phase", choices=("backward", "forward"), default="backward",
                   help="the compute timed: backward, or forward (where a sharded step's gathers run)")
    p.add_argument("--op", choices=("allreduce", "gather"), default="allreduce",
                   help="the collective beside it: an all-reduce, or a sharded gather as ddtrain runs it "
                        "on Gloo (each rank broadcasts its 1/N of the buffer)")
    p.add_argument("--port", type=int, default=29533, help="the process group's rendezvous port")
    args = p.parse_args(argv)
    if args.repeats < 2 or args.count < 1 or args.mib <= 0:
        p.error("--repeats must be >= 2 (the first is left out), --count >= 1 and --mib > 0")
    if not args.config.is_file():
        p.error(f"--config {args.config}: no such file (a study writes STUDY/node_probe/config.json)")
    return args


def measure(args: argparse.Namespace, rank: int, world: int) -> dict:
    import torch
    import torch.distributed as dist

    from ddtrain.comm.sharded import broadcast_shards
    from ddtrain.config import from_mapping
    from ddtrain.data.feed import to_device, train_loader
    from ddtrain.loss import build_loss
    from ddtrain.trainer import build_datasets, make_model

    cfg = from_mapping(json.loads(args.config.read_text()))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=rank, world_size=world)
    dataset, _ = build_datasets(cfg)
    model = make_model(cfg, getattr(dataset, "spec", None))
    loader = train_loader(cfg.data, dataset, rank=rank, world_size=world, seed=cfg.seed, workers=0,
                          pin_memory=False)
    x, y = to_device(loader.batch_at(0), torch.device("cpu"))
    loss_fn = build_loss(cfg.loss)
    buf = torch.zeros(int(args.mib * 2**20) // 4)

    def collectives(out: list[float]) -> None:
        t0 = time.perf_counter()
        for _ in range(args.count):
            if args.op == "allreduce":
                dist.all_reduce(buf)
                continue
            for work in broadcast_shards(buf, buf.numel() // world, list(range(world))):
                work.wait()
        out.append(time.perf_counter() - t0)

    def compute(loss):
        if args.phase == "backward":
            loss.backward()
        else:
            loss_fn(model(x), y)

    alone, beside, comm = [], [], []
    for r in range(args.repeats):
        for mode in ("alone", "beside") if r % 2 == 0 else ("beside", "alone"):
            dist.barrier()  # both ranks run the same mode at once, as a job's ranks do
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y) if args.phase == "backward" else None
            if mode == "alone":
                t0 = time.perf_counter()
                compute(loss)
                alone.append(time.perf_counter() - t0)
                continue
            done: list[float] = []
            thread = threading.Thread(target=collectives, args=(done,))
            t0 = time.perf_counter()
            thread.start()
            compute(loss)
            beside.append(time.perf_counter() - t0)
            thread.join()
            comm.append(done[0])
    comm_alone: list[float] = []
    for _ in range(args.repeats):
        dist.barrier()
        collectives(comm_alone)
    dist.destroy_process_group()
    a, b, c, d = (statistics.median(v[1:]) for v in (alone, beside, comm, comm_alone))
    return {"rank": rank, "phase": args.phase, "op": args.op, "mib": args.mib, "count": args.count,
            "compute_alone_ms": a * 1e3, "compute_beside_ms": b * 1e3, "collectives_beside_ms": c * 1e3,
            "collectives_alone_ms": d * 1e3, "lost_share": (b - a) / min(b, c)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if "OMPI_COMM_WORLD_SIZE" not in os.environ:
        from ddtrain.launcher.mpirun import console_script

        mpirun = console_script("mpirun")
        command = [mpirun, "-np", str(args.ranks), "--bind-to", "none", sys.executable, __file__, *argv]
        return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode
    rank, world = int(os.environ["OMPI_COMM_WORLD_RANK"]), int(os.environ["OMPI_COMM_WORLD_SIZE"])
    row = measure(args, rank, world)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes")
    row.update(device=f"{platform.machine()}, {os.cpu_count()} CPUs", date=now,
               command=shlex.join(["python", "launch/bench_loss_beside.py", *argv]))
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
