"""Both kernel benchmarks refuse what they cannot do in one line with exit status 2."""

from __future__ import annotations

import pytest
import torch

from tests.cli_helpers import run_launch_script

pytest.importorskip("triton", reason="Triton is not installed")


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("bench_rnn.py", ["--cells", "lstm"], "lstm not in rnn,gru"),
        ("bench_packing.py", ["--dtype", "fp32,int8"], "int8 not in fp32,bf16,fp16"),
        *(
            [] if torch.cuda.is_available() else [
                ("bench_rnn.py", ["--cells", "rnn"], "needs a CUDA GPU"),
                ("bench_packing.py", ["--tensors", "100"], "needs a CUDA GPU"),
            ]
        ),
    ],
)
def test_bad_arguments_and_a_missing_gpu_are_one_line_errors(tmp_path, script, args, message):
    proc = run_launch_script(script, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    if "GPU" in message:
        assert proc.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("args, message", [
    (["--config", "missing.json"], "--config missing.json: no such file"),
    (["--config", "c.json", "--repeats", "1"], "--repeats must be >= 2"),
])
def test_the_loss_beside_benchmark_refuses_bad_input_before_launching(tmp_path, args, message):
    (tmp_path / "c.json").write_text("{}")
    proc = run_launch_script("bench_loss_beside.py", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
