"""The user's own model, data set and loss through the config: ``model=custom``, ``data=custom``,
``loss._target_``, in-process (the mpirun runs are in tests/mpi/test_plugins_mpi.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddtrain.cli import compose_config
from ddtrain.config import ConfigError, from_mapping, to_flat_dict
from ddtrain.data import spec_of
from ddtrain.data.spec import DataSpec
from ddtrain.dist.env import detect_launch_env
from ddtrain.dist.group import DistContext
from ddtrain.loss import build_loss, cross_entropy
from ddtrain.models.mlp import MLP, MLPConfig
from ddtrain.perf.flops import COUNTED, MODEL_FORMULA, count_flops, flops_per_sample
from ddtrain.trainer import build_datasets, make_model, train
from tests.plugin_pkg import CLASSES, FEATURES, NAME, OVERRIDES, WIDTH, write_package


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(write_package(tmp_path / "site")))
    yield
    import sys

    for mod in [m for m in sys.modules if m == NAME or m.startswith(NAME + ".")]:
        del sys.modules[mod]


def composed(overrides):
    return from_mapping(compose_config(list(overrides)))


def test_targets_and_their_keys_reach_the_typed_config(plugin):
    cfg = composed([*OVERRIDES, "trainer.eval_every=5"])
    assert cfg.model.target == f"{NAME}.nets.Net"
    assert cfg.model.kwargs == {"features": FEATURES, "width": WIDTH, "classes": CLASSES}
    assert cfg.data.kwargs == {"n": 512, "features": FEATURES, "classes": CLASSES}
    assert cfg.loss.kwargs == {"smoothing": 0.05}
    flat = to_flat_dict(cfg)  # what checkpoints and TensorBoard record: the target, by its override name
    assert flat["model._target_"] == f"{NAME}.nets.Net" and flat["model.width"] == WIDTH
    assert flat["data._target_"] == f"{NAME}.data.make_train_set" and flat["loss.smoothing"] == 0.05


def test_the_model_data_and_loss_are_the_users(plugin):
    cfg = composed([*OVERRIDES, "trainer.eval_every=5"])
    train_set, val_set = build_datasets(cfg)
    assert type(train_set).__name__ == "Blobs" and len(train_set) == 512 and len(val_set) == 128
    assert spec_of(train_set).kind == "any"
    model = make_model(cfg, spec_of(train_set))
    assert type(model).__name__ == "Net" and model.head.out_features == CLASSES
    x, y = train_set.x[:8], train_set.y[:8]
    loss = build_loss(cfg.loss)(model(x), y)
    plain = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.05)
    assert torch.allclose(loss, plain)
    assert build_loss(composed([]).loss) is cross_entropy  # the default


def test_a_class_loss_is_built_with_its_keys():
    cfg = from_mapping({"loss": {"_target_": "torch.nn.CrossEntropyLoss", "label_smoothing": 0.1}})
    fn = build_loss(cfg.loss)
    assert isinstance(fn, torch.nn.CrossEntropyLoss) and fn.label_smoothing == 0.1


def test_a_plugin_run_learns_validates_and_counts_its_flops(plugin, tmp_path):
    cfg = composed([*OVERRIDES, "trainer.steps=30", "trainer.log_every=10", "trainer.eval_every=15",
                    "trainer.progress=false", "tensorboard=false", "optim.lr=0.01"])
    ctx = DistContext(detect_launch_env({}), torch.device("cpu"), None)
    result = train(cfg, ctx, tmp_path / "run")
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < 0.5 * first, (first, last)
    assert [v["step"] for v in result.validations] == [15, 30]
    assert result.validations[-1]["val_accuracy"] > 0.9  # separable blobs
    assert result.validations[-1]["val_loss"] < result.validations[0]["val_loss"]
    # Net has no flops_per_sample: the run counted its three Linear layers on one batch.
    expected = 4 * FEATURES * WIDTH + 6 * WIDTH * WIDTH + 6 * WIDTH * CLASSES
    tflops = result.history[-1]["achieved_tflops"]
    assert tflops == pytest.approx(result.history[-1]["samples_per_s"] * expected / 1e12)
    log = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"split": "val"' in log


class _Hidden(nn.Module):
    """The built-in MLP without its formula: what a user's model looks like to the counter."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def test_the_counter_agrees_with_the_mlp_formula_and_changes_nothing():
    torch.manual_seed(0)
    mlp = MLP(MLPConfig(hidden=64, layers=2), DataSpec("image", 3, 8, 10))
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    rng = torch.get_rng_state()
    flops, source = flops_per_sample(_Hidden(mlp), lambda: (x, y), 16, cross_entropy)
    assert source == COUNTED and flops == mlp.flops_per_sample()
    assert torch.equal(torch.get_rng_state(), rng)  # the count drew no random numbers of the run's
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())
    assert all(p.grad is None for p in mlp.parameters())  # it ran on a copy
    assert flops_per_sample(mlp, lambda: pytest.fail("not called"), 16, cross_entropy) == (
        mlp.flops_per_sample(), MODEL_FORMULA)
    assert count_flops(_Hidden(mlp), x, y, cross_entropy) == 16 * mlp.flops_per_sample()


@pytest.mark.parametrize("overrides, needle", [
    (["model=custom"], "model=custom needs model._target_=package.module.Class"),
    (["model=custom", "model._target_=Net"], "model._target_='Net' is not a dotted path"),
    (["model=custom", "model._target_=nosuchpkg.nets.Net"],
     "cannot import nosuchpkg.nets (No module named 'nosuchpkg'); PYTHONPATH must reach it on every node"),
    (["model=custom", f"model._target_={NAME}.nets.Missing"],
     f"module {NAME}.nets has no attribute 'Missing'"),
    (["model=custom", f"model._target_={NAME}.broken.Net"], "importing userplug.broken failed: RuntimeError"),
    (["model=custom", f"model._target_={NAME}.nets.NotAModule"], "is a class but not a torch.nn.Module"),
    (["data=custom"], "data=custom needs data._target_="),
    (["data=custom", "data._target_=nosuchpkg.make"], "PYTHONPATH must reach it on every node"),
    (["model=gpt", "data=custom", f"data._target_={NAME}.data.make_train_set"],
     "data=custom gives the user's own samples but model needs tokens; use data=chars or data=synthetic or "
     "data=tokens, or model=custom"),
    (["loss._target_=nosuchpkg.loss"], "loss._target_=nosuchpkg.loss: cannot import nosuchpkg"),
    (["+loss.smoothing=0.1"], "loss.smoothing is set but loss._target_ is not"),
    (["trainer.eval_every=5"], "trainer.eval_every=5 needs a validation set, and data=synthetic has none"),
    (["data=tokens"], "data=tokens needs data.path=FILE.bin"),
    (["data=images"], "data=images needs data.root=DIR"),
    (["model=convnet", "data=images", "data.root=x", "data.on_bad_image=ignore"],
     "data.on_bad_image='ignore'"),
])
def test_bad_targets_fail_in_one_line_at_validation(plugin, overrides, needle):
    with pytest.raises(ConfigError) as err:
        composed(overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("target, needle", [
    (f"{NAME}.nets.not_a_module", "returned a list, not a torch.nn.Module"),
])
def test_a_factory_that_returns_no_module_is_refused(plugin, target, needle):
    cfg = composed(["model=custom", f"model._target_={target}"])
    with pytest.raises(ConfigError, match=needle):
        make_model(cfg, DataSpec("image", 3, 8, 10))


def test_a_data_maker_that_returns_no_dataset_is_refused(plugin):
    cfg = composed(["model=custom", f"model._target_={NAME}.nets.make_net", "data=custom",
                    f"data._target_={NAME}.data.not_a_dataset"])
    with pytest.raises(ConfigError, match="gave a int, not a map-style Dataset"):
        build_datasets(cfg)


def test_bad_keyword_arguments_name_the_call(plugin):
    cfg = composed(["model=custom", f"model._target_={NAME}.nets.Net", "+model.widht=3"])
    with pytest.raises(ConfigError, match=r"model._target_=userplug.nets.Net\(widht=3\) failed: TypeError"):
        make_model(cfg, DataSpec("image", 3, 8, 10))


def test_a_config_written_as_a_mapping_reads_back_the_same(plugin):
    from ddtrain.config import to_mapping

    cases = ([], [*OVERRIDES, "trainer.eval_every=5"], ["model=gpt", "data=chars", "data.paths=[a,b]"])
    for overrides in cases:
        cfg = composed(overrides)
        assert from_mapping(to_mapping(cfg)) == cfg
