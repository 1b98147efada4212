"""Published data-parallel scaling results, each predicted through ``ddtrain-scale`` exactly as a
user would type it, with the default device model (the roofline, for a GPU this machine lacks),
the shipped cluster presets and one efficiency table: nothing is tuned per case.

    python -m ddtrain.scaling.published                 # every case: a Markdown table
    python -m ddtrain.scaling.published --cases horovod_resnet101 --json out.json

Each case says which inputs come from its source and which are assumptions. The goal: scaling
efficiency within 3 points of the published figure and fraction of peak within 5. A case that
misses stays in the table with its miss; docs/validation.md gives the reasons.

A published fraction of peak is either the source's own (Diamos et al.) or the source's
throughput per GPU times ddtrain's FLOP count of the same model, over the same datasheet peak
the prediction uses, so both sides count FLOPs one way.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

EFFICIENCY_GOAL = 0.03
FRACTION_GOAL = 0.05

_IMAGES = ("data=synthetic", "data.samples=128", "data.num_classes=1000")


@dataclass(frozen=True)
class Case:
    name: str
    source: str  # where the published figures are: paper or page, and the table or section
    overrides: tuple[str, ...]  # the study's overrides after the common predict-only ones
    world_size: int  # the N the published figure is for
    baseline: str  # what the published efficiency is against: "1" (one GPU) or "node"
    efficiency: float  # published scaling efficiency at world_size
    fraction_of_peak: float | None = None  # published, when the source states it
    rate_per_worker: float | None = None  # published samples/s per GPU at world_size
    from_source: str = ""
    assumptions: str = ""

    def command(self, run_dir: str | Path = "DIR") -> list[str]:
        return ["ddtrain-scale", "scale.predict_only=true", "scale.world_sizes=[1]",
                f"scale.predict_to={self.world_size}", f"scale.baseline={self.baseline}",
                *self.overrides, f"hydra.run.dir={run_dir}"]


CASES: tuple[Case, ...] = (
    Case(
        "diamos2016_prnn",
        "Diamos et al., 'Persistent RNNs', ICML 2016: 31% of peak on 1 GPU, 28% at 128 GPUs",
        ("model=prnn", "data=speech", "model.cell=rnn", "model.hidden=768", "model.layers=7",
         "model.conv_layers=0", "data.seq_len=300", "data.samples=64", "cluster=titanx_ib_2016"),
        world_size=128, baseline="1", efficiency=28 / 31, fraction_of_peak=0.28,
        from_source="TITAN X (Maxwell) GPUs, persistent kernels, minibatch 4 per GPU, 31% -> 28% of peak",
        assumptions="7 plain-RNN layers of 768 units (the largest ddtrain's persistent kernel keeps on a "
                    "TITAN X's 24 SMs in fp32; the paper's layer sizes are not in the text we have), "
                    "300 frames per utterance, no convolutions; cluster titanx_ib_2016 (FDR InfiniBand "
                    "assumed)"),
    Case(
        "horovod2018_resnet101",
        "Sergeev & Del Balso 2018 (Horovod) and github.com/horovod/horovod docs/benchmarks: 90% at 128 GPUs",
        ("model=custom", "model._target_=torchvision.models.resnet101", *_IMAGES, "data.image_size=224",
         "data.batch_size=64", "comm.bucket_mb=64", "cluster=roce25_4gpu"),
        world_size=128, baseline="1", efficiency=0.90, rate_per_worker=129.0 * 0.90,
        from_source="128 Pascal GPUs, 4 per server, 25 Gb/s RoCE, batch 64 per GPU, 90% efficiency; "
                    "Horovod's 64 MB fusion buffer",
        assumptions="one-GPU rate 129 img/s (interpolated by FLOPs between TensorFlow's published P100 "
                    "ResNet-50 and ResNet-152 rates); P100 PCIe; fp32"),
    Case(
        "horovod2018_inception_v3",
        "Sergeev & Del Balso 2018 (Horovod) and github.com/horovod/horovod docs/benchmarks: 90% at 128 GPUs",
        ("model=custom", "model._target_=torchvision.models.inception_v3", "+model.aux_logits=false",
         "+model.init_weights=false", *_IMAGES, "data.image_size=299", "data.batch_size=64",
         "comm.bucket_mb=64", "cluster=roce25_4gpu"),
        world_size=128, baseline="1", efficiency=0.90, rate_per_worker=142.0 * 0.90,
        from_source="as ResNet-101; one-GPU rate 142 img/s from TensorFlow's published P100 benchmarks",
        assumptions="P100 PCIe; fp32; no auxiliary head"),
    Case(
        "horovod2018_vgg16",
        "Sergeev & Del Balso 2018 (Horovod) and github.com/horovod/horovod docs/benchmarks: 79% at 128 GPUs",
        ("model=custom", "model._target_=torchvision.models.vgg16", *_IMAGES, "data.image_size=224",
         "data.batch_size=64", "comm.bucket_mb=64", "cluster=roce25_4gpu"),
        world_size=128, baseline="1", efficiency=0.79, rate_per_worker=154.0 * 0.79,
        from_source="as ResNet-101; one-GPU rate 154 img/s from TensorFlow's published P100 benchmarks",
        assumptions="P100 PCIe; fp32"),
    Case(
        "goyal2017_resnet50",
        "Goyal et al. 2017, 'Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour', abstract: "
        "~90% scaling efficiency from 8 to 256 GPUs",
        ("model=resnet", "model.depth=50", "model.norm=batch", *_IMAGES, "data.image_size=224",
         "data.batch_size=32", "cluster=big_basin_2017"),
        world_size=256, baseline="node", efficiency=0.90,
        from_source="ResNet-50, 256 P100 GPUs in Big Basin servers of 8 (NVLink), minibatch 8192 (32 per "
                    "GPU), 50 Gbit Ethernet, against one server of 8",
        assumptions="fp32; NVLink bus bandwidth 40 GB/s; 10 us per Ethernet hop; the paper's single-server "
                    "throughput is not in the text we have, so no fraction of peak"),
    Case(
        "nvidia_dle_resnet50_dgx1_fp32",
        "NVIDIA DeepLearningExamples, PyTorch/Classification/ConvNets/resnet50v1.5/README.md, Training "
        "performance, DGX-1 (8x V100 16GB), FP32: 367 img/s on 1 GPU, 2855 on 8",
        ("model=resnet", "model.depth=50", "model.norm=batch", *_IMAGES, "data.image_size=224",
         "data.batch_size=112", "cluster=dgx1_v100"),
        world_size=8, baseline="1", efficiency=2855 / (8 * 367), rate_per_worker=2855 / 8,
        from_source="one DGX-1, FP32, 367 -> 2855 img/s (7.76x)",
        assumptions="batch 112 per GPU (the example's current FP32 setting; not confirmed for the table); "
                    "ddtrain's ResNet-50 for ResNet-50 v1.5; NVLink bus bandwidth 100 GB/s"),
    Case(
        "nvidia_dle_transformer_xl_dgx2h_fp32",
        "NVIDIA DeepLearningExamples, PyTorch/LanguageModeling/Transformer-XL/README.md, Training "
        "performance, 8x DGX-2H (16x V100 32GB), Large model, FP32: 69,070 tok/s on one node, weak "
        "scaling 7.45 on 8 nodes",
        ("model=gpt", "model.layers=18", "model.dim=1024", "model.heads=16", "data=synthetic",
         "data.seq_len=384", "data.vocab_size=30000", "data.samples=16", "data.batch_size=4",
         "cluster=dgx2h_v100"),
        world_size=128, baseline="node", efficiency=7.45 / 8, rate_per_worker=69070 * 7.45 / 128 / 384,
        from_source="18 layers, d_model 1024, 384-token segments, batch 4 per GPU, FP32, 16 GPUs per node, "
                    "no gradient accumulation",
        assumptions="ddtrain's GPT stands in for Transformer-XL (no segment memory, no relative positions, "
                    "no adaptive softmax: vocabulary 30000 tied, so the parameters match the model's 257M); "
                    "8x 100 Gb/s EDR per node; NVSwitch bus bandwidth 120 GB/s"),
)


@dataclass(frozen=True)
class Outcome:
    case: str
    command: str
    world_size: int
    baseline: str
    published_efficiency: float
    predicted_efficiency: float
    published_fraction: float | None
    predicted_fraction: float
    device_model: str

    @property
    def efficiency_miss(self) -> float:
        return self.predicted_efficiency - self.published_efficiency

    @property
    def fraction_miss(self) -> float | None:
        return None if self.published_fraction is None else self.predicted_fraction - self.published_fraction

    @property
    def within_goal(self) -> bool:
        frac = self.fraction_miss
        return abs(self.efficiency_miss) <= EFFICIENCY_GOAL and (frac is None or abs(frac) <= FRACTION_GOAL)


def outcome(case: Case, report: dict) -> Outcome:
    """The published figures beside the study's prediction at the case's N (``report``: the
    study's scaling.json)."""
    row = next(r for r in report["rows"] if r["kind"] == "predicted" and r["world_size"] == case.world_size)
    efficiency = row["scaling_efficiency"] if case.baseline == "1" else row["scaling_efficiency_vs_node"]
    published_fraction = case.fraction_of_peak
    if published_fraction is None and case.rate_per_worker is not None:
        flops_per_sample = row["tflops_per_worker"] * 1e12 * row["step_time_s"] / row["batch_per_worker"]
        published_fraction = case.rate_per_worker * flops_per_sample / (row["peak_tflops"] * 1e12)
    return Outcome(case.name, " ".join(case.command()), case.world_size, case.baseline, case.efficiency,
                   efficiency, published_fraction, row["fraction_of_peak"],
                   report["meta"]["device_model"]["name"])


def run_case(case: Case, run_dir: Path, timeout: float = 900) -> Outcome:
    """``case`` through the ddtrain-scale console script; a failed study raises with its stderr."""
    exe = shutil.which("ddtrain-scale") or str(Path(sys.executable).with_name("ddtrain-scale"))
    proc = subprocess.run([exe, *case.command(run_dir)[1:]], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = proc.stderr.strip()[-2000:]
        raise RuntimeError(f"{case.name}: ddtrain-scale exited {proc.returncode}: {tail}")
    return outcome(case, json.loads((run_dir / "scaling.json").read_text()))


def _pts(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "not published"
    return f"{x * 100:+.1f}" if signed else f"{x * 100:.1f}%"


def table(outcomes: list[Outcome]) -> str:
    lines = ["| case | N | baseline | efficiency: published | predicted | miss (points) | fraction of peak: "
             "published | predicted | miss (points) | within goal |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(
            f"| {o.case} | {o.world_size} | {'1 GPU' if o.baseline == '1' else 'one node'} "
            f"| {_pts(o.published_efficiency)} | {_pts(o.predicted_efficiency)} "
            f"| {_pts(o.efficiency_miss, True)} "
            f"| {_pts(o.published_fraction)} | {_pts(o.predicted_fraction)} | {_pts(o.fraction_miss, True)} "
            f"| {'yes' if o.within_goal else 'no'} |")
    return "\n".join(lines)


def inputs_table(cases: list[Case]) -> str:
    """Each case's command, what comes from its source and what is assumed."""
    lines = ["| case | source | from the source | assumptions | command |", "|---|---|---|---|---|"]
    for c in cases:
        command = " ".join(c.command()).replace("|", "\\|")
        lines.append(f"| {c.name} | {c.source} | {c.from_source} | {c.assumptions} | `{command}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", choices=[c.name for c in CASES], default=[c.name for c in CASES])
    p.add_argument("--json", type=Path, help="also write every case's figures here")
    p.add_argument("--keep", type=Path, help="keep each study's directory under this folder")
    p.add_argument("--jobs", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                   help="cases run at once (default: the CPUs, at most 4)")
    args = p.parse_args(argv)
    cases = [c for c in CASES if c.name in args.cases]
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for case in cases:
            print(f"{case.name}: {' '.join(case.command(root / case.name))}", file=sys.stderr, flush=True)
        # Each case is its own ddtrain-scale process; they share nothing but the CPUs.
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            outcomes = list(pool.map(lambda c: run_case(c, root / c.name), cases))
    print(table(outcomes))
    print()
    print(inputs_table([c for c in CASES if c.name in args.cases]))
    if args.json:
        figures = [asdict(o) | {"within_goal": o.within_goal} for o in outcomes]
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
