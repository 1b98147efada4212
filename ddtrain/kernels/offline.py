"""Every Triton kernel compiled for a GPU this machine need not have, and what the compiled code
asks of the GPU: registers per thread, stack, local memory (spills) and shared memory.

Triton compiles for a CUDA target without a GPU (PTX, then a cubin through its bundled ptxas),
and its bundled ``cuobjdump --dump-resource-usage`` reads the resources out of the cubin. From
them follows what the recurrence planner (rnn_plan.py) assumes but cannot know on its own:

* how many programs of a kernel fit on one SM at once (registers, shared memory, threads);
* whether a persistent grid is co-resident on the target's SM count, which its grid-wide
  barrier needs: a program waiting for a free SM would wait for a barrier that never completes;
* whether the weight slice stays in registers (no local memory) where the plan keeps it on chip.

    python -m ddtrain.kernels.offline                 # the whole table, Markdown
    python -m ddtrain.kernels.offline --json out.json --targets sm_90

Compiling needs Triton without its interpreter: the work runs in fresh processes with
TRITON_INTERPRET unset. Results are cached by the kernel sources, Triton's version and the
configuration (``DDTRAIN_KERNEL_CACHE``, default ~/.cache/ddtrain/kernels).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ddtrain.kernels.rnn_plan import RESOURCES_FILE, SPILL_ALLOWANCE, Device, Plan, plan_recurrence

KERNELS_DIR = Path(__file__).resolve().parent
DTYPES = ("fp32", "fp16", "bf16")
ELEMENT_SIZE = {"fp32": 4, "fp16": 2, "bf16": 2}
CELLS = (("rnn", "tanh"), ("rnn", "relu"), ("gru", "tanh"))
HIDDEN = (512, 1024, 2048)
BATCH = 4


@dataclass(frozen=True)
class Target:
    name: str  # sm_XY
    capability: int
    gpu: str  # the GPU whose SM count is used
    sm_count: int
    regs_per_sm: int = 65536
    max_threads_per_sm: int = 2048
    shared_per_sm: int = 0  # bytes a block may use at most on one SM


# Datasheet figures: H100 SXM5 132 SMs, 228 KB of shared memory per SM (227 KB usable by one
# block); A100 108 SMs, 164 KB (163 KB usable). 64K registers and 2048 threads per SM on both.
TARGETS = {
    "sm_90": Target("sm_90", 90, "H100 SXM", 132, shared_per_sm=227 * 1024),
    "sm_80": Target("sm_80", 80, "A100", 108, shared_per_sm=163 * 1024),
}


@dataclass(frozen=True)
class Config:
    """One kernel compile: which kernel, for which layer, planned how."""

    kernel: str  # recurrence_fwd | recurrence_bwd | move_blocks
    target: str
    dtype: str
    cell: str = ""
    act: str = ""
    mm: str = ""
    hidden: int = 0
    batch: int = 0
    path: str = ""  # the plan's: persistent | stepwise ("" for the packing kernel)
    programs: int = 0
    block_h: int = 0
    num_warps: int = 4
    pack: bool = True  # move_blocks only: pack (tensor -> buffer) or unpack
    # False: a persistent candidate the budget allows but the plan refuses, because this very
    # compile spills (kept, so the refusal rests on a measurement); True: what the plan runs.
    planned: bool = True

    def key(self) -> str:
        """What the compiled code depends on (whether the plan runs it does not change it)."""
        return json.dumps({k: v for k, v in asdict(self).items() if k != "planned"}, sort_keys=True)


@dataclass(frozen=True)
class Resources:
    registers: int  # per thread
    stack: int  # bytes per thread
    local: int  # bytes per thread of local memory: spills
    shared: int  # bytes per block: the cubin's static shared memory and what Triton asks for at launch
    error: str = ""  # the compile error, if it failed


@dataclass(frozen=True)
class Row:
    config: Config
    resources: Resources
    programs_per_sm: int
    co_resident: bool | None  # persistent: the whole grid fits at once; None when not persistent

    @property
    def problems(self) -> list[str]:
        c, res, out = self.config, self.resources, []
        limit = TARGETS[c.target].shared_per_sm
        if res.error:
            out.append(f"compile error: {res.error}")
        elif c.planned and c.path in ("persistent", "stepwise") and res.shared > limit:
            out.append(f"asks for {res.shared // 1024} KiB of shared memory per block, over {c.target}'s "
                       f"{limit // 1024} KiB: the launch would fail")
        if not res.error and c.path == "persistent" and c.planned:
            spill = res.local + res.stack
            if spill > SPILL_ALLOWANCE:
                out.append(f"spills in a persistent kernel (stack {res.stack} B, local {res.local} B per "
                           f"thread, over the {SPILL_ALLOWANCE}-byte allowance): the weight slice leaves "
                           "the registers")
            if not self.co_resident:
                out.append(f"{c.programs} programs cannot be co-resident on {c.target}'s SMs at "
                           f"{self.programs_per_sm} per SM: the grid barrier would deadlock")
        return out


# ------------------------------------------------------------------------------ what to compile
def plan_for(target: Target, cell: str, mm: str, dtype: str, hidden: int, batch: int = BATCH,
             measured: bool = True, shared: bool = True) -> Plan:
    """The plan on ``target``; ``shared=False`` leaves its shared-memory limit unknown, which gives
    the tensor-core kernel the plan would hand over to the CUDA-core one for lack of it."""
    gates = 3 if cell == "gru" else 1
    device = Device(target.sm_count, target.regs_per_sm, capability=target.capability,
                    shared_per_block=target.shared_per_sm if shared else 0)
    return plan_recurrence(hidden=hidden, batch=batch, gates=gates, element_size=ELEMENT_SIZE[dtype],
                           device=device, want="auto", mm=mm, measured=measured)


def largest_persistent_hidden(target: Target, cell: str, mm: str, dtype: str, batch: int = BATCH) -> int:
    """The largest hidden size (a multiple of 64) the register budget allows persistent on
    ``target``, before any compiled kernel is consulted."""
    best, h = 0, 64
    while h <= 16384:
        if plan_for(target, cell, mm, dtype, h, batch, measured=False).path == "persistent":
            best = h
        h += 64
    return best


def recurrence_configs(target: Target) -> list[Config]:
    """For each shape: the persistent candidate the budget allows (compiled to see whether it
    spills), the kernel the plan runs given those spills (compiled to see its shared memory) and,
    when the plan refuses either, the kernel it runs instead."""
    out = []
    for cell, act in CELLS:
        for mm in ("fma", "dot"):
            for dtype in DTYPES:
                sizes = sorted({*HIDDEN, largest_persistent_hidden(target, cell, mm, dtype)} - {0})
                for hidden in sizes:
                    plan = plan_for(target, cell, mm, dtype, hidden)
                    tried = [plan_for(target, cell, mm, dtype, hidden, measured=False),
                             plan_for(target, cell, mm, dtype, hidden, shared=False), plan]
                    unique = list({replace(p, reason=""): p for p in tried}.values())
                    for p in unique:
                        planned = replace(p, reason="") == replace(plan, reason="")
                        for kernel in ("recurrence_fwd", "recurrence_bwd"):
                            out.append(Config(kernel, target.name, dtype, cell, act, p.mm, hidden, BATCH,
                                              p.path, p.programs, p.block_h, p.num_warps, planned=planned))
    return out


def packing_configs(target: Target) -> list[Config]:
    return [Config("move_blocks", target.name, dtype, pack=pack)
            for dtype in DTYPES for pack in (True, False)]


def all_configs(targets: list[str]) -> list[Config]:
    return [c for name in targets
            for c in (*recurrence_configs(TARGETS[name]), *packing_configs(TARGETS[name]))]


# ------------------------------------------------------------------------------ occupancy
def programs_per_sm(target: Target, res: Resources, num_warps: int) -> int:
    """How many programs (blocks) of this kernel one SM holds at once. Registers are allocated
    per warp in units of 256 (8 per thread rounded up), as on every GPU since Volta."""
    threads = 32 * num_warps
    regs_per_warp = -(-max(res.registers, 1) * 32 // 256) * 256
    by_regs = target.regs_per_sm // (regs_per_warp * num_warps)
    by_threads = target.max_threads_per_sm // threads
    by_shared = target.shared_per_sm // res.shared if res.shared else by_threads
    return max(0, min(by_regs, by_threads, by_shared))


def row(config: Config, res: Resources) -> Row:
    target = TARGETS[config.target]
    per_sm = programs_per_sm(target, res, config.num_warps) if not res.error else 0
    co = per_sm * target.sm_count >= config.programs if config.path == "persistent" else None
    return Row(config, res, per_sm, co)


# ------------------------------------------------------------------------------ compiling
def _sources_hash() -> str:
    import triton

    h = hashlib.sha256(triton.__version__.encode())
    for name in ("rnn_triton.py", "packing.py", "offline.py"):  # offline.py: what is read from a compile
        h.update((KERNELS_DIR / name).read_bytes())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("DDTRAIN_KERNEL_CACHE", Path.home() / ".cache" / "ddtrain" / "kernels"))


def _cache_path(config: Config, sources: str) -> Path:
    return cache_dir() / sources / (hashlib.sha256(config.key().encode()).hexdigest()[:24] + ".json")


_RESOURCE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def parse_resource_usage(text: str, kernel: str) -> Resources:
    """The line for ``kernel`` in ``cuobjdump --dump-resource-usage`` output."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("Function") and kernel in line:
            m = _RESOURCE.search(lines[i + 1])
            if m:
                reg, stack, shared, local = (int(x) for x in m.groups())
                return Resources(reg, stack, local, shared)
    raise ValueError(f"no resource line for {kernel} in cuobjdump's output")


def _signature_and_constants(config: Config):
    """(Triton function, signature, constexprs) for ``config``; imports the kernels uninterpreted."""
    import triton.language as tl

    pointer = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}[config.dtype]
    if config.kernel == "move_blocks":
        from ddtrain.kernels import packing

        fn = packing._move_blocks
        sig = {"table": "*i64", "addrs": "*i64", "buf": pointer, "scale": "fp32"}
        const = {"EXT": {"fp32": tl.float32, "fp16": tl.float16, "bf16": tl.bfloat16}[config.dtype],
                 "PACK": config.pack, "BUF_VEC": 4, "BLOCK": packing.BLOCK}
        return fn, sig, const
    from ddtrain.kernels import rnn_triton as k

    plan = Plan(config.path, block_h=config.block_h, programs=config.programs, num_warps=config.num_warps,
                mm=config.mm)
    torch_dtype = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[config.dtype]
    import torch

    const = k._common_meta(config.cell, config.act, plan, config.batch, config.hidden,
                           getattr(torch, torch_dtype))
    const["BARRIER"] = config.path == "persistent"
    const["MAX_SPIN"] = k.MAX_SPIN
    if config.kernel == "recurrence_fwd":
        fn = k._recurrence_fwd
        sig = {n: pointer for n in ("xw_ptr", "hbuf_ptr", "u_ptr", "bhh_ptr", "gates_ptr")}
        sig |= {"bar_ptr": "*i32", "err_ptr": "*i32", "B": "i32", "H": "i32", "t0": "i32", "n_steps": "i32"}
        const |= {"HAS_BIAS": True, "SAVE": config.cell == "gru"}
    else:
        fn = k._recurrence_bwd
        acc = "*fp32"
        sig = {n: pointer for n in ("dy_ptr", "hbuf_ptr", "gates_ptr", "u_ptr", "gx_ptr", "gh_ptr")}
        sig |= {"carry_ptr": acc, "bar_ptr": "*i32", "err_ptr": "*i32", "T": "i32", "B": "i32", "H": "i32",
                "t0": "i32", "n_steps": "i32"}
        const |= {"FINISH": 1}
    return fn, sig, const


def compile_one(config: Config) -> Resources:
    """Compile ``config`` for its target and read its resources (in this process; it must not
    be running Triton's interpreter)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, sig, const = _signature_and_constants(config)
    sig = {**sig, **{name: "constexpr" for name in const}}
    names = fn.arg_names
    src = ASTSource(fn, sig, constexprs={(names.index(n),): v for n, v in const.items()})
    target = TARGETS[config.target]
    try:
        compiled = triton.compile(src, target=GPUTarget("cuda", target.capability, 32),
                                  options={"num_warps": config.num_warps})
    except Exception as e:  # a compile error is a result: the table reports it
        return Resources(0, 0, 0, 0, error=" ".join(str(e).split())[:300] or type(e).__name__)
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    cubin = cache_dir() / f"tmp-{os.getpid()}.cubin"
    cubin.parent.mkdir(parents=True, exist_ok=True)
    cubin.write_bytes(compiled.asm["cubin"])
    try:
        out = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(cubin)], capture_output=True,
                             text=True, check=True).stdout
    finally:
        cubin.unlink(missing_ok=True)
    static = parse_resource_usage(out, fn.__name__)
    # Triton keeps tl.dot operands and layout conversions in dynamic shared memory, which the cubin
    # does not declare; the launch asks for it, and fails when the GPU has less.
    return replace(static, shared=static.shared + compiled.metadata.shared)


def _worker(config_json: str) -> str:
    return json.dumps(asdict(compile_one(Config(**json.loads(config_json)))))


def _uninterpreted() -> None:
    os.environ.pop("TRITON_INTERPRET", None)


def resources(configs: list[Config], jobs: int = 2) -> list[Resources]:
    """Each config's resources: from the cache, else compiled in fresh processes (with Triton's
    interpreter off) and cached."""
    sources = _sources_hash()
    out: dict[int, Resources] = {}
    todo = []
    for i, c in enumerate(configs):
        path = _cache_path(c, sources)
        if path.is_file():
            out[i] = Resources(**json.loads(path.read_text()))
        else:
            todo.append(i)
    if todo:
        import multiprocessing

        saved = os.environ.pop("TRITON_INTERPRET", None)  # children start without it (spawn)
        try:
            ctx = multiprocessing.get_context("spawn")
            pool_of = concurrent.futures.ProcessPoolExecutor
            with pool_of(jobs, mp_context=ctx, initializer=_uninterpreted) as pool:
                done = pool.map(_worker, [configs[i].key() for i in todo])
                for i, result in zip(todo, done, strict=True):
                    out[i] = Resources(**json.loads(result))
                    if not out[i].error:
                        path = _cache_path(configs[i], sources)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_text(result)
        finally:
            if saved is not None:
                os.environ["TRITON_INTERPRET"] = saved
    return [out[i] for i in range(len(configs))]


def table(rows: list[Row]) -> str:
    lines = ["| target | kernel | cell | mm | dtype | H | path | programs | warps | regs | stack | local | "
             "shared | per SM | co-resident | problems |", "|" + "---|" * 16]
    # A refused candidate's path reads "persistent (refused)": compiled to show why the plan refuses it.
    for r in rows:
        c, s = r.config, r.resources
        co = "" if r.co_resident is None else ("yes" if r.co_resident else "NO")
        cell = f"{c.cell} {c.act}" if c.cell else ("pack" if c.pack else "unpack")
        path = c.path if c.planned else f"{c.path} (refused)"
        lines.append(f"| {c.target} | {c.kernel} | {cell} | {c.mm} | {c.dtype} | {c.hidden or ''} | {path} "
                     f"| {c.programs or ''} | {c.num_warps} | {s.registers} | {s.stack} | {s.local} "
                     f"| {s.shared} "
                     f"| {r.programs_per_sm} | {co} | {'; '.join(r.problems)} |")
    return "\n".join(lines)


def measured_table(rows: list[Row]) -> list[dict]:
    """The rows rnn_plan reads (kernel_resources.json): every recurrence compile, keyed by what
    decides its code (path, gates, element size, mapping, padded H, block, warps)."""
    out = []
    for r in rows:
        c, s = r.config, r.resources
        if c.kernel == "move_blocks" or s.error:
            continue
        out.append({"path": c.path, "capability": TARGETS[c.target].capability,
                    "gates": 3 if c.cell == "gru" else 1,
                    "element_size": ELEMENT_SIZE[c.dtype], "mm": c.mm,
                    "h_pad": max(16, 1 << (c.hidden - 1).bit_length()),
                    "block_h": c.block_h, "num_warps": c.num_warps, "kernel": c.kernel, "cell": c.cell,
                    "act": c.act, "dtype": c.dtype, "hidden": c.hidden, "registers": s.registers,
                    "stack": s.stack, "local": s.local, "shared": s.shared})
    return sorted(out, key=lambda d: json.dumps(d, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    p.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--json", type=Path, help="also write every row here")
    p.add_argument("--write", action="store_true",
                   help=f"rewrite {RESOURCES_FILE.name}, the measured figures the recurrence planner reads")
    args = p.parse_args(argv)
    configs = all_configs(args.targets)
    rows = [row(c, r) for c, r in zip(configs, resources(configs, args.jobs), strict=True)]
    print(table(rows))
    if args.write:
        RESOURCES_FILE.write_text(json.dumps(measured_table(rows), indent=0) + "\n")
    if args.json:
        args.json.write_text(json.dumps([asdict(r.config) | asdict(r.resources) | {
            "programs_per_sm": r.programs_per_sm, "co_resident": r.co_resident, "problems": r.problems}
            for r in rows], indent=1))
    bad = [r for r in rows if r.problems]
    if bad:
        print(f"{len(bad)} of {len(rows)} kernels have problems", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
