"""A performance model of one data-parallel training step, from measured single-worker inputs.

Inputs (``Profile``): one worker's forward, backward, optimizer and data time at its batch; the
gradient buckets in launch order, each with its size and the point in backward when its last
gradient is ready; the step-time jitter. Plus a ``Cluster``: GPUs per node, intra- and
inter-node bandwidth and latency, and the all-reduce algorithm.

A step at N workers is predicted as

    step(N) = data + S_N * K * (forward + backward + fill) + exposed_comm(N) + K_opt * optimizer

* fill (``Profile.fill_s``) is what copying every gradient into its bucket, scaled by 1/N,
  adds to backward: the reducer does it in backward's hooks whenever a worker has peers (N > 1)
  and one worker alone never does, so its profile times it apart. It drops each gradient once
  copied, which one worker alone does not either, so on CPU it may save as much as it costs.

* All-reduces run one at a time on one stream (as in ddtrain's reducer, DDP and Horovod), each
  starting when its bucket is ready and the previous one has finished. Whatever finishes after
  backward is exposed; the rest hid behind the remaining backward. Where no core is spare for
  communication (``Profile.overlap`` False), a collective in flight beside backward runs
  slower than alone (``MeasuredAllReduce.beside_slowdown``) and takes part of the core from it
  (``MeasuredAllReduce.compute_lost``, all of it where not measured): backward is longer by
  that share of the time they were in flight beside it.
* Each all-reduce costs alpha-beta (Hockney) time for its algorithm (``allreduce_time``).
* S_N = 1 + z_N * cv is the straggler factor: a synchronous step waits for the slowest of N
  workers, and the expected maximum of N normal samples is mean + z_N * sd (z_2 = 0.56,
  z_128 = 2.6). ``cv`` is the measured step-time jitter (sd / median) of one worker.
* K is the cluster's node-sharing slowdown (1 for one GPU per worker; measured on CPU nodes,
  where workers share cores and memory bandwidth), K_opt the same for the optimizer step.
* Sharded data parallel (``Profile.shard``, comm.shard): ``optimizer`` all-reduces as above,
  ``gradients`` reduce-scatters each bucket (half an all-reduce: half the steps, half the
  traffic; ``Profile.scatter_share``); both step 1/N of the optimizer and then all-gather every
  bucket (half an all-reduce again). The gathers start after the update, the first layers' bucket first, and
  the next forward waits for each bucket when it reaches its layers; what it waits is the
  exposed gather, added to the step (all of it when nothing overlaps).

Pure functions only: no torch, no process group.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

ALGORITHMS = ("ring", "tree", "hierarchical")


@dataclass(frozen=True)
class Bucket:
    nbytes: int
    ready: float  # fraction of backward elapsed when the bucket's last gradient exists, in [0, 1]


@dataclass(frozen=True)
class Profile:
    """One worker, measured (or, for validation, recorded from a paper)."""

    batch: int  # per-worker batch the times are for
    forward_s: float
    backward_s: float
    optimizer_s: float
    data_s: float
    buckets: tuple[Bucket, ...]  # launch order
    flops_per_sample: float  # training (forward + backward) FLOPs
    cv: float = 0.0  # step-time jitter of one worker: robust sd / median (scaling/spread.py)
    # False: no core is spare for communication (CPU workers filling every core). The
    # all-reduces still start during backward, but take the core from it: backward stretches by
    # the time they overlap it, so the step is as long as if nothing overlapped.
    overlap: bool = True
    shard: str = "none"  # comm.shard: none | optimizer | gradients
    # A reduce-scatter's time as a share of an all-reduce's of the same bucket: 0.5, half the
    # traffic (NCCL's reduce-scatter; on Gloo ddtrain's shard exchange, comm/sharded.py).
    scatter_share: float = 0.5
    # What copying every gradient into its bucket, scaled by 1/N (the reducer's fill, in
    # backward's hooks), adds to backward: a worker with peers does it every step, one alone
    # never. Negative where dropping each gradient once copied saves more than the copy costs.
    fill_s: float = 0.0

    @property
    def compute_s(self) -> float:
        return self.forward_s + self.backward_s

    @property
    def step_s(self) -> float:
        return self.data_s + self.compute_s + self.optimizer_s

    @property
    def grad_bytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)

    def at_batch(self, batch: int) -> Profile:
        """The same worker at another per-worker batch (strong scaling), assuming time per
        sample stays constant. Optimistic for small batches, where GPUs lose efficiency; a
        study measures every batch it runs and uses this only for sizes it only predicts."""
        f = batch / self.batch
        return dataclasses.replace(
            self, batch=batch, forward_s=self.forward_s * f, backward_s=self.backward_s * f,
            data_s=self.data_s * f,
        )

    def scaled_compute(self, factor: float) -> Profile:
        """Compute phases ``factor`` times as long: the profile carried to another device."""
        return dataclasses.replace(
            self, forward_s=self.forward_s * factor, backward_s=self.backward_s * factor,
            optimizer_s=self.optimizer_s * factor, fill_s=self.fill_s * factor,
        )


@dataclass(frozen=True)
class Cluster:
    name: str
    device: str  # peak-table key of the workers' device ("" = the machine the study runs on)
    gpus_per_node: int
    intra_bw_GBps: float  # achievable all-reduce bus bandwidth inside a node, per GPU
    intra_latency_us: float  # per algorithm step inside a node
    inter_bw_GBps: float  # achievable network bandwidth per node (all its NICs together)
    inter_latency_us: float  # per algorithm step across nodes
    algorithm: str = "ring"  # ring | tree | hierarchical
    overhead_us: float = 0.0  # fixed cost per collective (launch, framework bookkeeping)
    # Step-time jitter (sd / median of one worker's steps) on this cluster, and where the figure
    # comes from. None only for the machine the study runs on: its jitter is measured there.
    cv: float | None = None
    cv_source: str = ""
    # Compute slowdown when a node's workers all run at once (shared cores, memory bandwidth,
    # caches). ~1 for GPUs (one device each); measured for CPU workers (``ddtrain-scale``).
    node_slowdown: float = 1.0
    # The same for the optimizer step, which streams the training state through memory and
    # slows more than compute where workers share a node's memory bandwidth.
    optimizer_slowdown: float = 1.0
    description: str = ""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"cluster.algorithm={self.algorithm!r} is not allowed; choose one of: "
                             f"{', '.join(ALGORITHMS)}")
        for key in ("gpus_per_node", "intra_bw_GBps", "inter_bw_GBps"):
            if not getattr(self, key) > 0:
                raise ValueError(f"cluster.{key}={getattr(self, key)!r} must be > 0")
        if self.cv is not None and not self.cv >= 0:
            raise ValueError(f"cluster.cv={self.cv!r} must be >= 0")
        if self.device and self.cv is None:
            # This machine's jitter says nothing of another cluster's: a CPU VM's 5-15% would
            # decide the predicted efficiency at 128 GPUs on its own.
            raise ValueError(f"cluster.cv is null for cluster {self.name}, which is not this machine: give "
                             "its step-time jitter (sd / median of one worker's step times, e.g. 0.03) and "
                             "cluster.cv_source, where the figure comes from")
        for key in ("node_slowdown", "optimizer_slowdown"):
            if not getattr(self, key) > 0:
                raise ValueError(f"cluster.{key}={getattr(self, key)!r} must be > 0")
        for key in ("intra_latency_us", "inter_latency_us", "overhead_us"):
            if getattr(self, key) < 0:
                raise ValueError(f"cluster.{key}={getattr(self, key)!r} must be >= 0")


@dataclass(frozen=True)
class MeasuredAllReduce:
    """All-reduce times measured on the cluster itself at one world size, used at that size in
    place of the formula below.

    Two parameters cannot follow every regime of a real link: a rate-limited link passes small
    messages at burst speed and large ones at its rate, so a latency-bandwidth fit over all
    sizes misses the gradient buckets' sizes in between.
    Between measured sizes the time is interpolated in log-log; beyond the largest it grows in
    proportion to size (the bandwidth regime). ``bus_bw_GBps`` is the cluster's bandwidth at
    the time: a cluster with other links (the sensitivity rows) scales the times by the ratio.
    """

    n: int
    points: tuple[tuple[float, float], ...]  # (bytes, seconds), sizes ascending
    bus_bw_GBps: float
    # (bytes, share of a core's compute lost beside it in flight) and (bytes, CPU seconds per
    # all-reduce, the busiest rank's), the same sizes; empty when the calibration did not
    # measure them.
    lost_points: tuple[tuple[float, float], ...] = ()
    cpu_points: tuple[tuple[float, float], ...] = ()
    # (bytes, seconds per all-reduce while a core's compute runs beside it), the same sizes;
    # empty when not measured.
    beside_points: tuple[tuple[float, float], ...] = ()

    def time(self, nbytes: float) -> float:
        return _loglog(self.points, nbytes)

    def beside_slowdown(self, nbytes: float) -> float:
        """How many times longer an all-reduce of ``nbytes`` takes while compute runs beside it
        on a node with no spare core than alone, at least 1; 1 when not measured."""
        if not self.beside_points:
            return 1.0
        return max(1.0, _loglog(self.beside_points, nbytes) / self.time(nbytes))

    def compute_lost(self, nbytes: float) -> float:
        """The share of a node's compute lost while an all-reduce of ``nbytes`` is in flight
        beside it and no core is spare, in [0, 1]; 1 when not measured. Two lower bounds, the
        larger taken: the collective's CPU time over its wall time beside compute (with no spare
        core, every CPU-second it uses is some rank's compute; its time alone where the time
        beside was not measured), and what a stream of small matmuls lost beside it (the waking
        and the evicted caches; small matmuls miss little of the latter, a backward more)."""
        wall = self.time(nbytes) * self.beside_slowdown(nbytes)
        cpu = min(1.0, _loglog(self.cpu_points, nbytes) / wall) if self.cpu_points else 0.0
        if not self.lost_points:
            return cpu if self.cpu_points else 1.0
        return max(cpu, self._stream_lost(nbytes))

    def _stream_lost(self, nbytes: float) -> float:
        """The matmul stream's lost share, linear in log size between calibrated sizes."""
        xs, ys = [math.log(x) for x, _ in self.lost_points], [y for _, y in self.lost_points]
        return min(1.0, max(0.0, float(np.interp(math.log(nbytes), xs, ys))))  # held beyond the ends


def _loglog(points: tuple[tuple[float, float], ...], x: float) -> float:
    """``points`` (x ascending) interpolated in log-log, constant below the first and in
    proportion to x beyond the last."""
    xs = [a for a, _ in points]
    ys = [max(b, 1e-12) for _, b in points]
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1] * x / xs[-1]
    i = next(k for k in range(1, len(xs)) if xs[k] >= x)
    f = math.log(x / xs[i - 1]) / math.log(xs[i] / xs[i - 1])
    return math.exp(math.log(ys[i - 1]) + f * math.log(ys[i] / ys[i - 1]))


def allreduce_time(nbytes: float, n: int, c: Cluster, measured: MeasuredAllReduce | None = None) -> float:
    """Seconds for one all-reduce of ``nbytes`` over ``n`` workers on cluster ``c``.

    measured: times measured at ``n`` on this cluster (``MeasuredAllReduce``), used instead of
        the formulas, plus ``overhead_us``.

    ring: 2(n-1) steps, each moving nbytes/n; every step waits for the slowest hop, so across
        nodes a step costs the inter-node latency. Bandwidth: a ring crosses each node boundary
        once per channel and NCCL runs one channel per NIC, so the bus bandwidth is the node's
        total network bandwidth (capped by the intra-node one).
    tree: NCCL's double binary tree; same bandwidth, latency 2 log2(nodes) inter-node hops plus
        a chain inside each node.
    hierarchical: reduce-scatter inside the node, ring all-reduce of 1/g of the data across
        nodes (the g GPUs of a node share its NICs), all-gather inside the node.
    """
    if n <= 1 or nbytes <= 0:
        return 0.0
    g = min(c.gpus_per_node, n)
    nodes = math.ceil(n / c.gpus_per_node)
    if measured is not None and measured.n == n:
        bw = c.inter_bw_GBps if nodes > 1 else c.intra_bw_GBps
        return measured.time(nbytes) * measured.bus_bw_GBps / bw + c.overhead_us * 1e-6
    intra_bw, inter_bw = c.intra_bw_GBps * 1e9, c.inter_bw_GBps * 1e9
    lat_intra, lat_inter = c.intra_latency_us * 1e-6, c.inter_latency_us * 1e-6
    traffic = 2 * (n - 1) / n * nbytes  # bytes each worker sends (and receives)
    if nodes == 1:
        t = 2 * (n - 1) * lat_intra + traffic / intra_bw
    elif c.algorithm == "ring":
        t = 2 * (n - 1) * lat_inter + traffic / min(intra_bw, inter_bw)
    elif c.algorithm == "tree":
        hops = 2 * (math.ceil(math.log2(nodes)) * lat_inter + (g - 1) * lat_intra)
        t = hops + traffic / min(intra_bw, inter_bw)
    else:  # hierarchical
        local = 2 * ((g - 1) * lat_intra + (g - 1) / g * nbytes / intra_bw)
        t = local + 2 * (nodes - 1) * lat_inter + 2 * (nodes - 1) / nodes * nbytes / inter_bw
    return t + c.overhead_us * 1e-6


def straggler_factor(n: int, cv: float) -> float:
    """E[max of n workers' compute] / one worker's, for normal jitter with sd = cv * mean.
    Blom's approximation of the expected maximum of n standard normals."""
    if n <= 1 or cv <= 0:
        return 1.0
    z = NormalDist().inv_cdf((n - 0.375) / (n + 0.25))
    return 1.0 + z * cv


@functools.cache
def median_lead(n: int) -> float:
    """The median of (the maximum of n standard normals) minus one of them: how long, in standard
    deviations of the compute, one rank of a synchronous step typically waits for the slowest.

    Zero for n <= 2, where a rank is the slowest in half the steps. The expected wait (z_N, in
    the straggler factor) is the right figure for the step, which every rank ends together; a
    rank's own exposed communication is reported as a median over its steps, so it gets this."""
    if n <= 2:
        return 0.0
    x, dx = np.linspace(-8.0, 8.0, 3201, retstep=True)
    density = np.exp(-x * x / 2) / math.sqrt(2 * math.pi)  # zero at both ends, so a plain sum integrates
    cdf = np.frompyfunc(NormalDist().cdf, 1, 1)

    def p_within(d: float) -> float:  # P(every other rank finishes within d of this one)
        return float(np.sum(density * cdf(x + d).astype(float) ** (n - 1)) * dx)

    lo, hi = 0.0, 10.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p_within(mid) < 0.5 else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class StepPrediction:
    world_size: int
    step_s: float
    compute_s: float  # forward + backward, straggler included
    comm_s: float  # all all-reduces, end to end, if nothing overlapped
    comm_exposed_s: float  # the part that did not hide behind backward
    straggler: float
    own_compute_s: float = 0.0  # forward + backward of one rank, without waiting for the slowest
    optimizer_s: float = 0.0  # the update: 1/N of one worker's when the optimizer is sharded
    gather_s: float = 0.0  # sharded: every bucket's all-gather, end to end
    gather_exposed_s: float = 0.0  # the part of it the next forward waits for
    rank_wait_s: float = 0.0  # the median of one rank's wait for the slowest (``median_lead``)

    @property
    def comm_hidden_frac(self) -> float:
        return 1.0 - self.comm_exposed_s / self.comm_s if self.comm_s > 0 else 1.0

    @property
    def rank_exposed_s(self) -> float:
        """Exposed communication as one rank measures it (from the end of its backward to the
        end of the last all-reduce), median over steps: the collectives cannot finish before the
        slowest rank joins, so it holds that rank's wait for the slowest besides what did not
        hide."""
        return self.comm_exposed_s + self.rank_wait_s


def jitter(p: Profile, c: Cluster) -> float:
    """The cv the straggler factor uses: the cluster's, or (this machine) the profile's."""
    return p.cv if c.cv is None else c.cv


# The other answers the model gives when its two least certain inputs are off: the jitter
# halved or doubled, the links' achievable bandwidth 20% lower or higher.
SENSITIVITY = ("cv_half", "cv_double", "links_minus_20pct", "links_plus_20pct")


def varied_clusters(p: Profile, c: Cluster) -> dict[str, Cluster]:
    """``c`` with each input of SENSITIVITY varied, one at a time."""
    cv = jitter(p, c)

    def links(factor: float) -> Cluster:
        return replace(c, intra_bw_GBps=c.intra_bw_GBps * factor, inter_bw_GBps=c.inter_bw_GBps * factor)

    return {"cv_half": replace(c, cv=cv / 2), "cv_double": replace(c, cv=cv * 2),
            "links_minus_20pct": links(0.8), "links_plus_20pct": links(1.2)}


def predict_step(p: Profile, c: Cluster, n: int,
                 measured: Mapping[int, MeasuredAllReduce] | None = None) -> StepPrediction:
    """One step at ``n`` workers; ``measured``: all-reduce times measured on ``c``, by world size."""
    cv = jitter(p, c)
    sharing = c.node_slowdown if n > 1 else 1.0
    s = straggler_factor(n, cv) * sharing
    fill = p.fill_s if n > 1 else 0.0
    fwd, bwd = s * p.forward_s, s * (p.backward_s + fill)
    sharded = p.shard != "none" and n > 1
    halves = []  # a bucket's all-gather (and reduce-scatter) time: half its all-reduce's
    times = []  # each bucket's collective during backward, at its time alone
    slow = []  # how many times longer each takes while backward runs beside it
    lost = []  # the share of the core's compute each takes while in flight beside backward
    here = (measured or {}).get(n)
    for b in p.buckets:
        t = allreduce_time(b.nbytes, n, c, here)
        halves.append(t / 2)
        if p.shard == "gradients":
            t *= p.scatter_share
        times.append(t)
        slow.append(here.beside_slowdown(b.nbytes) if here is not None and not p.overlap else 1.0)
        lost.append(here.compute_lost(b.nbytes) if here is not None else 1.0)
    comm = sum(times)
    busy = bool(p.buckets) and n > 1
    # No spare core: a collective in flight beside backward runs slower than alone (measured
    # beside a compute stream) and takes from the core the share of compute the calibration saw
    # lost beside it (over a slow link mostly waiting, which hides). Backward is longer by that,
    # so its later buckets are ready later and more of the collectives hide: a fixed point,
    # reached in a few rounds, as a longer backward moves its buckets' readiness by less than
    # its own extra length.
    stretch, exposed = 0.0, 0.0
    for _ in range(50 if busy else 0):
        end, taken = _queue(p.buckets, times, slow, lost, fwd, bwd + stretch)
        exposed = max(0.0, end - (fwd + bwd + stretch))
        if p.overlap or abs(taken - stretch) < 1e-9:
            break
        stretch = taken
    optimizer = (p.optimizer_s / n if sharded else p.optimizer_s) * (c.optimizer_slowdown if n > 1 else 1.0)
    gather = sum(halves) if sharded else 0.0
    waited = gather_wait(p, fwd, halves) if sharded else 0.0
    step = p.data_s + fwd + bwd + stretch + exposed + optimizer + waited
    own = sharing * (p.compute_s + fill)
    return StepPrediction(n, step, fwd + bwd + stretch, comm, exposed, s, own + stretch, optimizer, gather,
                          waited, median_lead(n) * cv * own)


def _queue(buckets: tuple[Bucket, ...], times: list[float], slow: list[float], lost: list[float],
           fwd: float, bwd: float) -> tuple[float, float]:
    """(when the last collective ends, the compute they took from backward). One at a time, each
    starting when its bucket is ready and the previous one is done; while backward runs, each
    takes ``slow`` times its time alone and ``lost`` of the core for as long as it is in flight,
    and after backward the rest of it runs at its time alone."""
    end, taken, done = 0.0, 0.0, fwd + bwd
    for b, t, r, share in zip(buckets, times, slow, lost):
        start = max(end, fwd + b.ready * bwd)
        if start >= done:
            end = start + t
        elif start + t * r <= done:
            end = start + t * r
            taken += share * t * r
        else:  # part of it beside backward, the rest alone
            end = done + t - (done - start) / r
            taken += share * (done - start)
    return end, taken


def gather_wait(p: Profile, fwd: float, gathers: list[float]) -> float:
    """How long the next forward waits for the buckets' all-gathers (one after another, the
    last bucket, which holds the first layers, first). A bucket's layers take the forward's
    share that their backward took (between the previous bucket's ready point and its own), and
    the data wait overlaps the gathers too. Without overlap every gather is waited for."""
    if not p.overlap:
        return sum(gathers)
    clock = p.data_s  # the forward starts when its batch is there
    gathered = 0.0
    previous_ready = [0.0] + [b.ready for b in p.buckets[:-1]]
    for k in reversed(range(len(p.buckets))):
        gathered += gathers[k]
        clock = max(clock, gathered) + fwd * max(0.0, p.buckets[k].ready - previous_ready[k])
    clock += fwd * max(0.0, 1.0 - p.buckets[-1].ready) if p.buckets else fwd
    return max(0.0, clock - (p.data_s + fwd))


@dataclass(frozen=True)
class ScalingPoint:
    world_size: int
    mode: str  # weak | strong
    batch_per_worker: int
    step_s: float
    samples_per_s: float
    speedup: float
    efficiency: float  # throughput_N / (N * throughput_1)
    tflops_per_worker: float
    comm_s: float
    comm_exposed_s: float
    compute_s: float


def scaling_curve(p: Profile, c: Cluster, world_sizes: list[int], mode: str,
                  global_batch: int | None = None) -> list[ScalingPoint]:
    """Predicted points. weak: every worker keeps ``p.batch``; strong: the global batch
    (default ``p.batch``) is split over N workers (N must divide it)."""
    if mode not in ("weak", "strong"):
        raise ValueError(f"mode={mode!r} is not allowed; choose one of: weak, strong")
    fixed_global = global_batch or p.batch
    base = p if mode == "weak" else p.at_batch(fixed_global)
    one_worker_step = predict_step(base, c, 1).step_s
    one_worker_rate = base.batch / one_worker_step
    out = []
    for n in world_sizes:
        if mode == "strong" and fixed_global % n:
            raise ValueError(f"strong scaling: global batch {fixed_global} is not divisible by {n} workers")
        prof = base if mode == "weak" else p.at_batch(fixed_global // n)
        pred = predict_step(prof, c, n)
        rate = n * prof.batch / pred.step_s
        out.append(ScalingPoint(
            world_size=n, mode=mode, batch_per_worker=prof.batch, step_s=pred.step_s,
            samples_per_s=rate, speedup=rate / one_worker_rate, efficiency=rate / (n * one_worker_rate),
            tflops_per_worker=prof.batch * p.flops_per_sample / pred.step_s / 1e12,
            comm_s=pred.comm_s, comm_exposed_s=pred.comm_exposed_s, compute_s=pred.compute_s,
        ))
    return out


def buckets_from_layers(layers: list[tuple[int, float]], bucket_bytes: int, bytes_per_param: int = 4,
                        ) -> tuple[Bucket, ...]:
    """Buckets for a model given as ``[(params, backward_cost), ...]`` in forward order.

    Backward visits layers last to first; a layer's gradients exist once its backward is done,
    so its ready point is the cumulative backward cost up to and including it. Layers are
    packed into buckets of at most ``bucket_bytes`` (a layer bigger than that gets its own),
    and a bucket is ready when its last layer is.
    """
    total = sum(cost for _, cost in layers) or 1.0
    out: list[Bucket] = []
    size, done, ready = 0, 0.0, 0.0
    for params, cost in reversed(layers):
        done += cost
        nbytes = params * bytes_per_param
        if size and size + nbytes > bucket_bytes:
            out.append(Bucket(size, ready))
            size = 0
        size += nbytes
        ready = done / total
    if size:
        out.append(Bucket(size, ready))
    return tuple(out)


def fusion_buckets(layers: list[tuple[int, float]], backward_s: float, cycle_s: float, cap_bytes: int,
                   bytes_per_param: int = 4) -> tuple[Bucket, ...]:
    """Horovod-style tensor fusion: every ``cycle_s`` the gradients that became ready during the
    cycle go out as one all-reduce (split at ``cap_bytes``). ``layers`` as in
    ``buckets_from_layers``; a layer's backward cost is spread over ``backward_s``."""
    total = sum(cost for _, cost in layers) or 1.0
    out: list[Bucket] = []
    size, done, cycle_end = 0, 0.0, cycle_s / backward_s
    for params, cost in reversed(layers):
        done += cost / total
        while done > cycle_end and size:  # the cycle closed before this layer was ready
            out.append(Bucket(size, min(cycle_end, 1.0)))
            size = 0
        while done > cycle_end:
            cycle_end += cycle_s / backward_s
        nbytes = params * bytes_per_param
        if size and size + nbytes > cap_bytes:
            out.append(Bucket(size, cycle_end))
            size = 0
        size += nbytes
    if size:
        out.append(Bucket(size, min(cycle_end, 1.0)))
    return tuple(out)
