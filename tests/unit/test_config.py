"""Typed config: defaults, per-model schemas, one-line errors, and the shipped YAML groups."""

from __future__ import annotations

import dataclasses
from importlib import resources

import pytest
from omegaconf import OmegaConf

from ddtrain.cli import compose_config
from ddtrain.config import (
    CommConfig,
    ConfigError,
    OptimConfig,
    TrainConfig,
    TrainerConfig,
    from_mapping,
    to_flat_dict,
    validate,
)
from ddtrain.data.chars import CharsData
from ddtrain.data.speech import SpeechData
from ddtrain.data.synthetic import SyntheticData
from ddtrain.models.convnet import ConvNetConfig
from ddtrain.models.gpt import GPTConfig
from ddtrain.models.mlp import MLPConfig
from ddtrain.models.prnn import PRNNConfig
from ddtrain.models.resnet import ResNetConfig
from ddtrain.models.rnn import RNNConfig
from ddtrain.registry import models

CONFIGS = resources.files("ddtrain.configs")
MODEL_OPTIONS = sorted(p.name.removesuffix(".yaml") for p in (CONFIGS / "model").iterdir()
                       if p.name.endswith(".yaml"))
EXPERIMENTS = sorted(p.name.removesuffix(".yaml") for p in (CONFIGS / "experiment").iterdir()
                     if p.name.endswith(".yaml"))


def config_error(raw) -> str:
    with pytest.raises(ConfigError) as info:
        from_mapping(raw)
    message = str(info.value)
    assert message and "\n" not in message
    return message


# --------------------------------------------------------------------------- building
def test_empty_mapping_gives_the_defaults():
    cfg = from_mapping({})
    assert cfg == TrainConfig()
    assert isinstance(cfg.model, MLPConfig)


@pytest.mark.parametrize(
    "name, schema",
    [("mlp", MLPConfig), ("convnet", ConvNetConfig), ("resnet", ResNetConfig), ("rnn", RNNConfig),
     ("gpt", GPTConfig), ("prnn", PRNNConfig)],
)
def test_each_model_name_builds_its_own_schema(name, schema):
    data = {"prnn": "speech"}.get(name, "synthetic")  # a data set that gives what it reads
    cfg = from_mapping({"model": {"name": name}, "data": {"name": data}})
    assert type(cfg.model) is schema
    assert cfg.model == schema()


def test_values_override_defaults_and_ints_become_floats():
    cfg = from_mapping({
        "model": {"name": "gpt", "dim": 64, "heads": 2},
        "optim": {"lr": 1, "schedule": "linear"},
        "trainer": {"steps": 7, "progress": False},
        "seed": 3,
        "hydra": {"run": {"dir": "ignored"}},  # Hydra's own node is not ours to check
    })
    assert cfg.model == GPTConfig(dim=64, heads=2)
    assert cfg.optim == OptimConfig(lr=1.0, schedule="linear")
    assert type(cfg.optim.lr) is float
    assert cfg.trainer == TrainerConfig(steps=7, progress=False)
    assert cfg.seed == 3
    assert cfg.data == SyntheticData() and cfg.comm == CommConfig()


@pytest.mark.parametrize("paths, expected", [([], ()), (["a.txt", "b.txt"], ("a.txt", "b.txt")),
                                             ("one.txt", ("one.txt",))])
def test_paths_become_a_tuple(paths, expected):
    raw = {"model": {"name": "gpt"}, "data": {"name": "chars", "paths": paths}}
    assert from_mapping(raw).data.paths == expected


def test_configs_are_frozen():
    cfg = from_mapping({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.batch_size = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- errors
# (raw config, the key the message must name, what it must say is allowed)
BAD = [
    ({"comm": {"bucket_mb": -1}}, "comm.bucket_mb", ["> 0"]),
    ({"comm": {"first_bucket_mb": 0}}, "comm.first_bucket_mb", ["> 0"]),
    ({"data": {"batch_size": 0}}, "data.batch_size", ["> 0"]),
    ({"model": {"name": "foo"}}, "model", ["mlp", "convnet", "resnet", "rnn", "gpt", "prnn", "custom"]),
    ({"comm": {"dtype": "int8"}}, "comm.dtype", ["fp32", "bf16", "fp16"]),
    ({"comm": {"engine": "horovod"}}, "comm.engine", ["ddtrain", "torch_ddp"]),
    ({"comm": {"pack": "cuda"}}, "comm.pack", ["auto", "triton", "torch"]),
    ({"trainer": {"precision": "fp8"}}, "trainer.precision", ["fp32", "bf16"]),
    ({"optim": {"schedule": "step"}}, "optim.schedule", ["constant", "cosine", "linear"]),
    ({"data": {"name": "imagenet"}}, "data", ["synthetic", "digits", "chars", "speech", "tokens", "images",
                                          "custom"]),
    ({"data": {"batch_sizee": 64}}, "data.batch_sizee", ["batch_size", "seq_len"]),
    ({"model": {"name": "mlp", "heads": 4}}, "model.heads", ["hidden", "layers"]),
    ({"optimizer": {"lr": 0.1}}, "optimizer", ["optim", "trainer"]),
    ({"data": {"batch_size": "abc"}}, "data.batch_size", ["integer"]),
    ({"data": {"batch_size": 32.5}}, "data.batch_size", ["integer"]),
    ({"data": {"batch_size": True}}, "data.batch_size", ["integer"]),
    ({"trainer": {"progress": "yes"}}, "trainer.progress", ["true", "false"]),
    ({"tensorboard": 1}, "tensorboard", ["true", "false"]),
    ({"optim": {"lr": "fast"}}, "optim.lr", ["number"]),
    ({"data": {"name": "chars", "paths": 5}}, "data.paths", ["list"]),
    ({"model": {"name": "gpt", "dim": 130, "heads": 4}}, "model.dim", ["divisible", "model.heads=4"]),
    ({"model": {"name": "gpt", "dropout": 1.0}}, "model.dropout", ["[0, 1)"]),
    ({"model": {"name": "resnet", "depth": 20}}, "model.depth", ["18", "34", "50"]),
    ({"model": {"name": "convnet", "norm": "layer"}}, "model.norm", ["group", "batch"]),
    ({"optim": {"beta2": 1.0}}, "optim.beta2", ["[0, 1)"]),
    ({"optim": {"min_lr_ratio": 1.5}}, "optim.min_lr_ratio", ["[0, 1]"]),
    ({"data": {"num_classes": 1}}, "data.num_classes", [">= 2"]),
    ({"trainer": {"threads": -2}}, "trainer.threads", [">= 0"]),
    ({"model": {"name": "prnn", "cell": "lstm"}}, "model.cell", ["gru", "rnn"]),
    ({"model": {"name": "prnn", "nonlinearity": "gelu"}}, "model.nonlinearity", ["relu", "tanh"]),
    ({"model": {"name": "prnn", "path": "fast"}}, "model.path",
     ["auto", "persistent", "stepwise", "cudnn", "reference"]),
    ({"model": {"name": "prnn", "kernel": 4}}, "model.kernel", ["odd"]),
    ({"model": {"name": "prnn", "conv_layers": -1}}, "model.conv_layers", [">= 0"]),
    ({"model": {"name": "prnn", "hidden": 0}}, "model.hidden", ["> 0"]),
    ({"model": {"name": "prnn", "embed": 64}}, "model.embed", ["conv_layers", "cell", "path"]),
    ({"data": {"name": "speech", "features": 0}}, "data.features", ["> 0"]),
    ({"data": {"name": "speech", "noise": -0.5}}, "data.noise", [">= 0"]),
    ({"data": {"name": "speech", "min_segment": 0}}, "data.min_segment", ["> 0"]),
    ({"data": {"name": "speech", "min_segment": 4, "max_segment": 3}}, "data.max_segment",
     ["data.min_segment=4"]),
]


def leaf_id(raw: dict) -> str:
    """``batch_size='abc'``: the leaves without their section, so that ``-k "not data"`` (which
    skips the slow data-set tests) keeps these."""
    leaves = []
    for key, value in raw.items():
        items = value.items() if isinstance(value, dict) else [(key, value)]
        leaves += [f"{k}={v!r}" for k, v in items]
    return ",".join(leaves)


@pytest.mark.parametrize("raw, key, allowed", BAD, ids=[leaf_id(raw) for raw, _, _ in BAD])
def test_bad_value_names_key_and_what_is_allowed(raw, key, allowed):
    message = config_error(raw)
    assert key in message
    for option in allowed:
        assert option in message


def test_bad_value_is_quoted_in_the_message():
    assert "'int8'" in config_error({"comm": {"dtype": "int8"}})
    assert "'abc'" in config_error({"data": {"batch_size": "abc"}})


def test_config_error_is_a_value_error():
    # Callers that only know ValueError (argument parsers, the data layer) still catch it.
    assert issubclass(ConfigError, ValueError)


def test_validate_checks_configs_built_in_code():
    validate(TrainConfig())
    with pytest.raises(ConfigError, match="data.batch_size"):
        validate(TrainConfig(data=SyntheticData(batch_size=0)))
    with pytest.raises(ConfigError, match="model.dim"):
        validate(TrainConfig(model=GPTConfig(dim=10, heads=4)))


# --------------------------------------------------------------------------- flat view
def test_flat_dict_has_one_dotted_scalar_per_field():
    cfg = TrainConfig(model=GPTConfig(), data=CharsData(paths=("a.txt", "b.txt")))
    flat = to_flat_dict(cfg)
    expected_keys = {"seed", "tensorboard", "loss._target_"}
    for section in ("model", "data", "optim", "comm", "trainer"):
        expected_keys |= {f"{section}.{f.name}" for f in dataclasses.fields(getattr(cfg, section))}
    assert set(flat) == expected_keys
    # TensorBoard's hparams table takes scalars and strings only.
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["model.name"] == "gpt"
    assert flat["model.heads"] == cfg.model.heads
    assert flat["data.paths"] == "a.txt,b.txt"
    assert flat["optim.lr"] == cfg.optim.lr


# --------------------------------------------------------------------------- shipped YAML
def composed(overrides: list[str]) -> TrainConfig:
    return from_mapping(compose_config(overrides))


def test_the_groups_hold_every_model():
    assert MODEL_OPTIONS == sorted(["mlp", "convnet", "resnet", "rnn", "gpt", "prnn", "custom"])
    assert MODEL_OPTIONS == sorted(models())  # one YAML per registry entry
    assert EXPERIMENTS  # the glob found the presets


# model=custom needs a _target_: tests/unit/test_plugins.py composes it.
@pytest.mark.parametrize("model", [m for m in MODEL_OPTIONS if m != "custom"])
def test_every_model_group_composes_to_a_valid_config(model):
    data = "speech" if model == "prnn" else "synthetic"  # a data set that gives what it reads
    cfg = composed([f"model={model}", f"data={data}"])
    assert cfg.model.name == model
    assert cfg.data.name == data
    # The YAML spells out each field: what it says is what the job gets.
    yaml = OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / f"{model}.yaml"))
    assert dataclasses.asdict(cfg.model) == yaml


def test_hydra_override_reaches_validation():
    with pytest.raises(ConfigError, match="model.dim"):
        composed(["model=gpt", "model.dim=130"])


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_to_a_valid_config(experiment):
    cfg = composed([f"+experiment={experiment}"])
    flat = to_flat_dict(cfg)
    preset = OmegaConf.to_container(OmegaConf.load(CONFIGS / "experiment" / f"{experiment}.yaml"))
    # Each "override /group: option" picks that group's file ...
    for entry in preset.pop("defaults", []):
        ((target, option),) = entry.items()
        group = target.removeprefix("override ").strip("/")
        assert flat[f"{group}.name"] == option
    # ... and each value the preset sets wins over the group's.
    for section, values in preset.items():
        for key, value in values.items():
            assert flat[f"{section}.{key}"] == value, f"{experiment}: {section}.{key}"


def test_speech_group_spells_out_its_keys_and_the_defaults_agree():
    cfg = composed(["model=prnn", "data=speech"])
    yaml = OmegaConf.to_container(OmegaConf.load(CONFIGS / "data" / "speech.yaml"))
    assert {k: getattr(cfg.data, k) for k in yaml} == yaml
    # The keys the group sets are the schema's defaults too, so a config built in code (tests,
    # scripts) generates the same data as the YAML.
    assert {k: getattr(SpeechData(), k) for k in yaml} == yaml


def test_the_shared_config_layer_imports_no_other_ddtrain_module_at_load():
    # Every component imports config.py for its section's schema; the registry of models and
    # data sets is loaded only when a config is built, so importing the schemas stays cheap and
    # free of import cycles.
    import ast
    import inspect

    import ddtrain.config

    tree = ast.parse(inspect.getsource(ddtrain.config))
    imported = [n.module for n in tree.body if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("ddtrain")], imported
