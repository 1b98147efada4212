#!/usr/bin/env python3
"""The GPU check: everything ddtrain cannot verify without a GPU, in one run of a few minutes.

Steps run in order; a failing step is reported and the next one runs. Each step has a time
limit, and a step that no longer fits in the whole run's budget (--budget-s, 8 minutes by
default, for one H100/H200) is reported as skipped. Writes gpu_check.md (a table of every step
and its figures, then each step's output) and gpu_check.json into $OUT if set, else
./gpu_check/, and gpu_check.tar.gz: every log and result file of the run under 8 MB (no
weights or checkpoints), so that one file carries the whole run off a machine.

    bash launch/gpu_check.sh              # on a machine with a CUDA GPU
    bash launch/gpu_check.sh --dry-run    # list the steps and their commands, run nothing
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SCALE = [PY, "-m", "ddtrain.scaling.cli"]
TRAIN = [PY, "-m", "ddtrain.cli"]
# A transformer large enough that its matmuls, not launches, set the step time on an H100.
GPT_BIG = [
    "model=gpt",
    "model.layers=12",
    "model.dim=1024",
    "model.heads=16",
    "data=synthetic",
    "data.seq_len=1024",
    "data.vocab_size=32000",
    "data.samples=512",
    "data.batch_size=16",
    "trainer.precision=bf16",
]
ROOFLINE_WORKLOADS = {
    "gpt": [
        "model=gpt",
        "data=synthetic",
        "model.dim=512",
        "model.layers=8",
        "data.seq_len=512",
        "data.batch_size=16",
        "trainer.precision=bf16",
    ],
    "resnet50": [
        "model=resnet",
        "model.depth=50",
        "model.norm=batch",
        "data=synthetic",
        "data.image_size=224",
        "data.samples=256",
        "data.num_classes=1000",
        "data.batch_size=64",
        "trainer.precision=bf16",
    ],
    "prnn": ["model=prnn", "data=speech", "model.path=persistent"],
}


@dataclass
class Step:
    name: str
    command: list[str]
    limit_s: int
    what: str  # one line: what the step shows
    result: dict = field(default_factory=dict)


def steps(out: Path) -> list[Step]:
    runs = out / "runs"
    s = [
        Step(
            "environment",
            [PY, str(Path(__file__).resolve()), "--environment"],
            20,
            "nvidia-smi; torch, CUDA, NCCL and Triton versions",
        ),
        Step(
            "ceilings",
            [PY, str(Path(__file__).resolve()), "--ceilings"],
            40,
            "the two roofs measured: a large bf16 and tf32 matmul, and a device-to-device copy",
        ),
        Step(
            "pytest gpu",
            [PY, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu", "tests/unit/test_replica.py"],
            150,
            "every GPU-marked test (Triton compiles each kernel variant on first use)",
        ),
    ]
    for mm in ("fma", "dot"):
        s.append(
            Step(
                f"bench_rnn {mm}",
                [
                    PY,
                    "launch/bench_rnn.py",
                    "--cells",
                    "rnn,gru",
                    "--dtypes",
                    "fp16,bf16",
                    "--hidden",
                    "1024,2048",
                    "--batches",
                    "4",
                    "--steps",
                    "256",
                    "--mm",
                    mm,
                    "--reps",
                    "10",
                    "--out",
                    str(out / f"bench_rnn_{mm}.json"),
                    "--markdown",
                    str(out / f"bench_rnn_{mm}.md"),
                ],
                50,
                f"persistent kernels ({mm}) against cuDNN, forward and forward+backward, batch 4",
            )
        )
    s.append(
        Step(
            "bench_packing",
            [PY, "launch/bench_packing.py", "--reps", "20", "--out", str(out / "bench_packing.json")],
            25,
            "bucket packing kernel against torch",
        )
    )
    s.append(
        Step(
            "gpt bf16 one GPU",
            [*TRAIN, *GPT_BIG, "trainer.compile=true", "trainer.steps=40", "trainer.log_every=10",
             "trainer.checkpoint=false", "trainer.save_model=false", f"hydra.run.dir={runs / 'gpt'}"],
            90,
            "a compute-bound transformer step, compiled: achieved TFLOP/s against the dense datasheet peak",
        )
    )
    s.append(
        Step(
            "prnn persistent one GPU",
            [
                *TRAIN,
                "+experiment=prnn_speech",
                "model.path=persistent",
                "trainer.steps=60",
                f"hydra.run.dir={runs / 'prnn'}",
            ],
            40,
            "the speech model on the persistent kernel",
        )
    )
    for name, workload in (("prnn", []), ("gpt", GPT_BIG)):
        s.append(
            Step(
                f"scale {name} to 128",
                [
                    *SCALE,
                    *workload,
                    "scale.world_sizes=[1]",
                    "scale.predict_to=128",
                    "cluster=dgx_h100",
                    "scale.steps=10",
                    "scale.repeats=1",
                    f"hydra.run.dir={runs / ('scale-' + name)}",
                ],
                50,
                f"one measured GPU ({name}) and the model to 128 GPUs of a DGX H100 cluster",
            )
        )
    for name, workload in ROOFLINE_WORKLOADS.items():
        s.append(
            Step(
                f"roofline {name}",
                [
                    *SCALE,
                    *workload,
                    "scale.world_sizes=[1]",
                    "scale.steps=10",
                    "scale.repeats=1",
                    "scale.device_model=roofline",
                    f"scale.cluster_file={out / 'this_gpu.yaml'}",
                    f"hydra.run.dir={runs / ('roofline-' + name)}",
                ],
                35,
                f"the roofline's one-GPU step for {name} against the one measured here",
            )
        )
    return s


def this_gpu_cluster(out: Path) -> None:
    """A cluster file naming this machine's GPU, so the roofline is of the device measured."""
    import torch
    from omegaconf import OmegaConf

    from ddtrain.perf.peak import match_device

    key = match_device(torch.cuda.get_device_name(0)) or ""
    preset = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "cluster" / "dgx_h100.yaml"))
    preset.update(name="this_gpu", device=key, description=f"this machine's {torch.cuda.get_device_name(0)}")
    (out / "this_gpu.yaml").write_text(OmegaConf.to_yaml(preset))


def peak_bf16() -> float:
    """This GPU's dense bf16 FLOP/s from the datasheet table (a probe if the table lacks it)."""
    import torch

    from ddtrain.perf.peak import resolve_peak

    return resolve_peak(torch.device("cuda", 0), "bf16").flops


def figures(step: Step, out: Path) -> dict:
    """What a finished step measured, read from the files it wrote."""
    runs = out / "runs"
    try:
        if step.name == "ceilings":
            return {line.split(":")[0]: line.split(":", 1)[1].split("(")[0].strip()
                    for log in (out / "logs").glob("*-ceilings.log")
                    for line in log.read_text().splitlines() if ":" in line}
        if step.name == "gpt bf16 one GPU":
            records = [json.loads(x) for x in (runs / "gpt" / "metrics.jsonl").read_text().splitlines()]
            last = records[-1]
            got = {k: last.get(k) for k in ("achieved_tflops", "samples_per_s", "step_time_s")}
            got["MFU (of the dense bf16 datasheet peak)"] = last["achieved_tflops"] / (peak_bf16() / 1e12)
            return got
        if step.name.startswith("scale ") or step.name.startswith("roofline "):
            run = runs / (
                "scale-" + step.name.split()[1]
                if step.name.startswith("scale ")
                else "roofline-" + step.name.split()[1]
            )
            rows = json.loads((run / "scaling.json").read_text())["rows"]
            pick = {(r["kind"], r["world_size"]): r for r in rows}
            got = {
                f"{kind} N={n} {key}": pick[(kind, n)][key]
                for (kind, n) in pick
                for key in ("step_time_s", "scaling_efficiency", "fraction_of_peak")
                if n in (1, 128)
            }
            if ("measured", 1) in pick and ("predicted", 1) in pick:
                # The scale steps predict a DGX H100 from this GPU, which need not be an H100:
                # their N=1 ratio then holds the two devices' difference as well as the model's.
                cross = step.name.startswith("scale ")
                label = ("predicted (cluster's GPU) / measured (this GPU) step - 1" if cross
                         else "predicted/measured step - 1")
                got[label] = pick[("predicted", 1)]["step_time_s"] / pick[("measured", 1)]["step_time_s"] - 1
            return got
    except (OSError, ValueError, KeyError, IndexError) as e:
        return {"figures unreadable": f"{type(e).__name__}: {e}"}
    return {}


def run(selected: list[Step], out: Path, budget_s: float) -> list[Step]:
    # The studies launch their one-GPU runs through mpirun, which refuses root without these.
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    os.environ.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    start = time.monotonic()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(selected):
        left = budget_s - (time.monotonic() - start)
        if left < step.limit_s:
            step.result = {
                "status": "skipped",
                "why": f"{left:.0f} s of the budget left, the step needs up to {step.limit_s} s",
            }
            continue
        print(f"[{i + 1}/{len(selected)}] {step.name} ...", flush=True)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                step.command, cwd=REPO, capture_output=True, text=True, timeout=step.limit_s
            )
            status, output = (
                "pass" if proc.returncode == 0 else f"fail (exit {proc.returncode})",
                proc.stdout + proc.stderr,
            )
        except subprocess.TimeoutExpired as e:
            status = f"fail (over {step.limit_s} s)"
            output = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        (logs / f"{i + 1:02d}-{step.name.replace(' ', '_')}.log").write_text(output)
        step.result = {
            "status": status,
            "seconds": round(time.monotonic() - t0, 1),
            "tail": output[-3000:],
            **figures(step, out),
        }
        print(f"    {status} in {step.result['seconds']} s", flush=True)
    return selected


def report(selected: list[Step], out: Path, argv: list[str]) -> None:
    header = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["bash", "launch/gpu_check.sh", *argv]),
    }
    (out / "gpu_check.json").write_text(
        json.dumps(
            {
                **header,
                "steps": [{"name": s.name, "command": shlex.join(s.command), **s.result} for s in selected],
            },
            indent=1,
            default=str,
        )
    )
    lines = [
        f"# GPU check, {header['date']}",
        "",
        f"Command: `{header['command']}`",
        "",
        "| step | status | seconds | figures |",
        "|---|---|---|---|",
    ]
    for s in selected:
        figs = "; ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in s.result.items()
            if k not in ("status", "seconds", "tail", "why")
        )
        lines.append(
            f"| {s.name} | {s.result.get('status')} {s.result.get('why', '')} "
            f"| {s.result.get('seconds', '')} | {figs} |"
        )
    for s in selected:
        for extra in sorted(out.glob(f"{s.name.split()[0]}*.md")):
            lines += ["", f"## {extra.stem}", "", extra.read_text()]
        if s.result.get("tail"):
            lines += ["", f"## {s.name}: output (tail)", "", "```text", s.result["tail"], "```"]
    (out / "gpu_check.md").write_text("\n".join(lines) + "\n")


def ceilings() -> None:
    """The matmul and copy rates this GPU reaches: the roofs a step's achieved rates are judged against."""
    import torch

    from ddtrain.perf.peak import probe_peak

    device = torch.device("cuda", 0)
    for dtype in ("bf16", "tf32"):
        probe = probe_peak(device, dtype, seconds=1.0)
        print(f"matmul {dtype}: {probe.flops / 1e12:.1f} TFLOP/s ({probe.label})")
    n = 1 << 30  # 4 GiB of fp32 each way: far past the 50-60 MB of L2
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    median = statistics.median(times[2:])
    print(f"copy: {2 * 4 * n / median / 1e9:.0f} GB/s (bytes read + written, median of 10 after 2 warm-ups)")


def bundle(out: Path, limit: int = 8 << 20) -> Path:
    """Every file of the run under ``limit`` bytes in one gzip'd tar beside the report."""
    import tarfile

    target = out / "gpu_check.tar.gz"
    with tarfile.open(target, "w:gz") as tar:
        for f in sorted(out.rglob("*")):
            if f.is_file() and f != target and f.stat().st_size < limit:
                tar.add(f, arcname=str(f.relative_to(out)))
    return target


def environment() -> None:
    import torch
    import triton

    smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True)
    print(smi.stdout or smi.stderr)
    print(
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {torch.cuda.nccl.version()}, "
        f"Triton {triton.__version__}, device {torch.cuda.get_device_name(0)}"
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--environment"]:
        environment()
        return 0
    if argv == ["--ceilings"]:
        ceilings()
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="list the steps and their commands; run nothing")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole run's time limit (default 8 min)")
    p.add_argument("--only", nargs="+", help="run only the steps whose names start with these words")
    args = p.parse_args(argv)
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("gpu_check")
    selected = [
        s for s in steps(out.resolve()) if not args.only or any(s.name.startswith(w) for w in args.only)
    ]
    if args.dry_run:
        for i, s in enumerate(selected, 1):
            print(f"{i:2d}. {s.name} (up to {s.limit_s} s): {s.what}\n    {shlex.join(s.command)}")
        print(
            f"total limit {sum(s.limit_s for s in selected)} s; budget {args.budget_s:.0f} s; "
            f"writes {out / 'gpu_check.md'}, {out / 'gpu_check.json'} and {out / 'gpu_check.tar.gz'}"
        )
        return 0
    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: error: no CUDA GPU is visible (torch.cuda.is_available() is False); run it on a GPU "
            "machine, or use --dry-run to list its steps",
            file=sys.stderr,
        )
        return 2
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    this_gpu_cluster(out)
    report(run(selected, out, args.budget_s), out, argv)
    print(f"wrote {out / 'gpu_check.md'}, {out / 'gpu_check.json'} and {bundle(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
