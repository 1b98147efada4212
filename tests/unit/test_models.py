"""Model zoo: shapes, gradients, analytic FLOPs vs FlopCounterMode, spec checks, norms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ddtrain.data.spec import DataSpec
from ddtrain.models import build_model
from ddtrain.models.convnet import ConvNetConfig
from ddtrain.models.gpt import GPTConfig
from ddtrain.models.mlp import MLPConfig
from ddtrain.models.prnn import PRNNConfig
from ddtrain.models.resnet import ResNetConfig
from ddtrain.models.rnn import RNNConfig
from ddtrain.registry import models

IMAGES = DataSpec(kind="image", channels=3, image_size=16, num_classes=10)
TOKENS = DataSpec(kind="tokens", seq_len=16, vocab_size=32)
FRAMES = DataSpec(kind="frames", seq_len=16, features=12, num_classes=7)

# (test id, config, spec): the defaults, plus the two ResNet layouts at a width that stays fast
CASES = [
    ("mlp", MLPConfig(), IMAGES),
    ("convnet", ConvNetConfig(), IMAGES),
    ("resnet18", ResNetConfig(depth=18, width=16), IMAGES),
    ("resnet50", ResNetConfig(depth=50, width=16), IMAGES),
    ("resnet18-imagenet-stem", ResNetConfig(depth=18, width=8), DataSpec("image", 3, 64, 10)),
    ("rnn", RNNConfig(), TOKENS),
    ("gpt", GPTConfig(), TOKENS),
    ("prnn", PRNNConfig(), FRAMES),
    ("prnn-rnn", PRNNConfig(cell="rnn", conv_layers=2, conv_channels=16, kernel=3, hidden=24), FRAMES),
    ("prnn-noconv", PRNNConfig(conv_layers=0, hidden=24, layers=2), FRAMES),
]
IDS = [c[0] for c in CASES]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: intra-op threads only add barriers. On a shared 2-vCPU runner the
    # OpenMP spin-waits made single steps 10-100x slower and erratic; one thread is steady.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def batch(spec: DataSpec, b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if spec.kind == "image":
        x = torch.randn(b, spec.channels, spec.image_size, spec.image_size, generator=g)
        return x, torch.randint(0, spec.num_classes, (b,), generator=g)
    if spec.kind == "frames":
        x = torch.randn(b, spec.seq_len, spec.features, generator=g)
        return x, torch.randint(0, spec.num_classes, (b, spec.seq_len), generator=g)
    x = torch.randint(0, spec.vocab_size, (b, spec.seq_len), generator=g)
    return x, torch.randint(0, spec.vocab_size, (b, spec.seq_len), generator=g)


def loss_of(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = model(x)  # the trainer's loss, for every model
    return F.cross_entropy(logits.flatten(0, -2), y.flatten())


def build(cfg, spec: DataSpec, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg, spec)


@pytest.mark.parametrize("name,cfg,spec", CASES, ids=IDS)
def test_shape_and_every_parameter_gets_a_finite_grad(name, cfg, spec):
    model = build(cfg, spec)
    x, y = batch(spec, 3)
    logits = model(x)
    if spec.kind == "image":
        assert logits.shape == (3, spec.num_classes)
    elif spec.kind == "frames":
        assert logits.shape == (3, spec.seq_len, spec.num_classes)
    else:
        assert logits.shape == (3, spec.seq_len, spec.vocab_size)
    loss_of(model, x, y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("name,cfg,spec", CASES, ids=IDS)
def test_flops_per_sample_matches_flop_counter(name, cfg, spec):
    model = build(cfg, spec)
    b = 2
    x, y = batch(spec, b)
    # The CPU flash-attention kernel is not in FlopCounterMode's registry (it would count 0);
    # the math backend runs plain bmm's, which it does count.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        loss_of(model, x, y).backward()
    measured = counter.get_total_flops() / b
    analytic = model.flops_per_sample()
    assert isinstance(analytic, int)
    assert analytic == pytest.approx(measured, rel=0.05), f"{name}: {analytic} vs counted {measured}"


@pytest.mark.parametrize("depth,gmacs", [(18, 1.814), (34, 3.664), (50, 4.089)])
def test_resnet_flops_match_published_imagenet_figures(depth, gmacs):
    # torchvision lists ResNet-18/34/50 at 224 px as 1.81/3.66/4.09 "GFLOPS" (multiply-adds).
    # Training costs ~6x that; ours is a little less because the stem gets no input gradient.
    model = build_model(ResNetConfig(depth=depth), DataSpec("image", 3, 224, 1000))
    assert model.stem_kind == "imagenet"
    assert model.flops_per_sample() / 6e9 == pytest.approx(gmacs, rel=0.03)


def test_resnet_auto_stem_follows_image_size():
    assert build_model(ResNetConfig(), IMAGES).stem_kind == "cifar"
    assert build_model(ResNetConfig(), DataSpec("image", 3, 64, 10)).stem_kind == "imagenet"
    assert build_model(ResNetConfig(stem="imagenet"), IMAGES).stem_kind == "imagenet"


def test_the_registry_holds_every_model_with_its_input_kind():
    assert {name: entry.input_kind for name, entry in models().items()} == {
        "convnet": "image",
        "custom": "any",
        "gpt": "tokens",
        "mlp": "image",
        "prnn": "frames",
        "resnet": "image",
        "rnn": "tokens",
    }


@pytest.mark.parametrize("cfg", [ConvNetConfig(width=16), ResNetConfig(width=16)], ids=["convnet", "resnet"])
def test_batchnorm_only_when_asked(cfg):
    def has_bn(m: nn.Module) -> bool:
        return any(isinstance(mod, nn.modules.batchnorm._BatchNorm) for mod in m.modules())

    default = build_model(cfg, IMAGES)
    assert not has_bn(default)
    assert any(isinstance(m, nn.GroupNorm) for m in default.modules())
    batch_cfg = type(cfg)(width=16, norm="batch")
    assert has_bn(build_model(batch_cfg, IMAGES))


@pytest.mark.parametrize("width", [1, 3, 12, 48, 96, 100])
def test_group_norm_is_valid_for_any_width(width):
    model = build_model(ConvNetConfig(width=width, stages=2), IMAGES)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_channels % m.num_groups == 0 and m.num_groups <= 32
    x, _ = batch(IMAGES, 2)
    assert model(x).shape == (2, 10)


SPLIT_CASES = [c for c in CASES if c[0] in ("mlp", "convnet", "rnn", "gpt", "prnn", "prnn-rnn")]


@pytest.mark.parametrize("name,cfg,spec", SPLIT_CASES, ids=[c[0] for c in SPLIT_CASES])
def test_data_parallel_gradient_equivalence(name, cfg, spec):
    # What data parallelism relies on: the mean of the gradients of two half batches equals the
    # gradient of the whole batch. BatchNorm would break this; GroupNorm must not.
    model = build(cfg, spec)
    x, y = batch(spec, 4)

    def grads(xs, ys):
        model.zero_grad()
        loss_of(model, xs, ys).backward()
        return [p.grad.clone() for p in model.parameters()]

    whole = grads(x, y)
    halves = [grads(x[:2], y[:2]), grads(x[2:], y[2:])]
    for g, g0, g1 in zip(whole, *halves, strict=True):
        torch.testing.assert_close(g, (g0 + g1) / 2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name,cfg,spec", CASES, ids=IDS)
def test_init_and_forward_are_deterministic(name, cfg, spec):
    a, b = build(cfg, spec, seed=7), build(cfg, spec, seed=7)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        assert torch.equal(va, vb), ka
    x, _ = batch(spec, 2)
    a.train()
    torch.testing.assert_close(a(x), a(x), rtol=0, atol=0)  # no randomness in forward


def test_gpt_head_is_tied_and_init_is_gpt2():
    model = build(GPTConfig(), TOKENS)
    assert model.head.weight is model.tok.weight
    std = model.blocks[0].attn.qkv.weight.std().item()
    assert std == pytest.approx(0.02, rel=0.1)
    assert torch.count_nonzero(model.blocks[0].attn.qkv.bias) == 0


def test_gpt_dropout_only_when_configured():
    assert not any(isinstance(m, nn.Dropout) for m in build(GPTConfig(), TOKENS).modules())
    model = build(GPTConfig(dropout=0.1), TOKENS)
    assert any(isinstance(m, nn.Dropout) for m in model.modules())
    x, _ = batch(TOKENS, 2)
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


def test_gpt_rejects_sequences_longer_than_its_context():
    model = build(GPTConfig(layers=1), TOKENS)
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, TOKENS.seq_len + 1, dtype=torch.long))


def test_rnn_keeps_a_torch_gru_named_rnn():
    assert isinstance(build(RNNConfig(), TOKENS).rnn, nn.GRU)


def test_unknown_model_name_is_rejected():
    with pytest.raises(ValueError, match="choose one of"):
        build_model(MLPConfig(name="transformer"), IMAGES)


# --------------------------------------------------------------------------- prnn
def test_prnn_flops_differ_from_the_counter_by_exactly_the_skipped_h0_gradient():
    # The analytic count includes, per recurrent layer, the input-gradient matmul of the first
    # step, 2*gates*H*H per sample, which autograd skips because h0 = 0 needs no gradient. Take
    # it out and the count is exact: everything else it counts is every matmul and conv the
    # reference path runs, forward and backward.
    b = 2
    for cfg in (PRNNConfig(conv_channels=16, hidden=24, layers=2),
                PRNNConfig(cell="rnn", conv_layers=2, conv_channels=8, kernel=3, hidden=16),
                PRNNConfig(conv_layers=0, hidden=16, layers=3)):
        model = build(cfg, FRAMES)
        x, y = batch(FRAMES, b)
        with FlopCounterMode(display=False) as counter:
            loss_of(model, x, y).backward()
        gates = 3 if cfg.cell == "gru" else 1
        skipped = cfg.layers * 2 * gates * cfg.hidden**2
        assert counter.get_total_flops() == b * (model.flops_per_sample() - skipped), cfg
        # ... and that term is at most 1/(3T) of the recurrent part, as the docstring says.
        assert skipped <= model.flops_per_sample() / (3 * FRAMES.seq_len)


def test_prnn_flops_formula_by_hand():
    # Defaults on FRAMES (F=12 features, T=16 frames, 7 classes): a conv 12->128 with k=5 that
    # reads the data (so 2x, not 3x); 3 GRU layers of input 128, hidden 128; a head 128->7.
    model = build_model(PRNNConfig(), FRAMES)
    conv = 2 * 5 * 12 * 128
    projection = 3 * 2 * 128 * 128  # gates * 2*I*H
    recurrent = 2 * 3 * 128**2  # the kernel benchmarks' 2*gates*H^2*B per step, at B = 1
    head = 2 * 128 * 7
    assert model.flops_per_sample() == 16 * (2 * conv + 3 * (3 * (projection + recurrent) + head))


@pytest.mark.parametrize("cell, torch_cls", [("gru", nn.GRU), ("rnn", nn.RNN)])
def test_prnn_recurrent_layers_are_drop_in_torch_modules(cell, torch_cls):
    cfg = PRNNConfig(cell=cell, nonlinearity="relu", conv_channels=16, hidden=24, layers=2)
    model = build(cfg, FRAMES)
    kw = {"nonlinearity": "relu"} if cell == "rnn" else {}
    twin = torch_cls(16, 24, num_layers=2, **kw)
    ours = {k.removeprefix("rnn."): v for k, v in model.state_dict().items() if k.startswith("rnn.")}
    # torch's parameter names, shapes and gate order: torch's module takes our weights as they are.
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in twin.state_dict().items()}
    twin.load_state_dict(ours)
    x, _ = batch(FRAMES, 3)
    h = model.conv(x.transpose(1, 2)).permute(2, 0, 1)
    want = model.head(twin(h)[0]).transpose(0, 1)
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
    assert set(model.state_dict()) == {"conv.0.weight", "conv.0.bias", "head.weight", "head.bias",
                                       *(f"rnn.{k}" for k in twin.state_dict())}


def test_prnn_conv_front_end_keeps_every_frame_and_passes_the_path_on():
    model = build_model(PRNNConfig(conv_layers=2, kernel=7, path="reference"), FRAMES)
    assert model.rnn.path == "reference" and model.rnn.cell == "gru"
    x, _ = batch(FRAMES, 2)
    assert model.conv(x.transpose(1, 2)).shape == (2, 128, FRAMES.seq_len)
    # Deep Speech 2's clipped ReLU after every conv.
    clips = [m for m in model.conv if isinstance(m, nn.Hardtanh)]
    assert len(clips) == 2 and all(c.min_val == 0 and c.max_val == 20 for c in clips)
    assert build_model(PRNNConfig(cell="rnn", nonlinearity="tanh"), FRAMES).rnn.nonlinearity == "tanh"


def test_prnn_on_cpu_runs_the_reference_loop():
    model = build(PRNNConfig(hidden=16, layers=1), FRAMES)
    x, _ = batch(FRAMES, 2)
    model(x)
    assert model.rnn.last_plan.path == "reference"
