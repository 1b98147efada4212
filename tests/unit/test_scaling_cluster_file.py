"""``scale.cluster_file``: a cluster description of one's own, read through the function that
validates the study config, and the one-line errors for every way the file can be wrong."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ddtrain.cli import compose_config
from ddtrain.config import ConfigError
from ddtrain.scaling.cli import cluster_override_problem
from ddtrain.scaling.config import parse_cluster, parse_study
from ddtrain.scaling.model import Cluster
from tests.assertions import one_line_error

REPO = Path(__file__).resolve().parents[2]
PRESETS = REPO / "configs" / "cluster"
FIELDS = [f.name for f in dataclasses.fields(Cluster)]
TAKES = "a cluster takes: " + ", ".join(FIELDS)
NOT_A_MAPPING = f"not a mapping of cluster keys; fix: write one 'key: value' line per key; {TAKES}"


@pytest.fixture(scope="module")
def composed() -> dict:
    """ddtrain-scale's composed config for a small predict-only study on the default cluster."""
    return compose_config(["scale.predict_only=true", "cluster=dgx_h100", "model=convnet", "data=synthetic"],
                          "scale")


def preset(name: str) -> dict:
    return OmegaConf.to_container(OmegaConf.load(PRESETS / f"{name}.yaml"))


def study(composed: dict, cwd: Path, cluster_file: str | None = None, **cluster):
    """parse_study on ``composed`` with ``scale.cluster_file`` set, or with the cluster section
    replaced by the dgx_h100 preset changed by ``cluster`` (the preset path)."""
    raw = copy.deepcopy(composed)
    if cluster_file is None:
        raw["cluster"] = {**preset("dgx_h100"), **cluster}
    else:
        raw["scale"]["cluster_file"] = cluster_file
    return parse_study(raw, cwd)


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(values)))
    return path


def test_the_scale_config_takes_the_key_and_defaults_to_no_file():
    raw = compose_config(["scale.cluster_file=mine.yaml"], "scale")
    assert raw["scale"]["cluster_file"] == "mine.yaml"
    assert compose_config([], "scale")["scale"]["cluster_file"] == ""


def test_the_file_replaces_the_cluster_section(composed, tmp_path):
    mine = {**preset("dgx_h100"), "name": "lab_h100", "gpus_per_node": 4, "inter_bw_GBps": 50.0}
    write_yaml(tmp_path / "mine.yaml", mine)
    _, scale, cluster = study(composed, tmp_path, "mine.yaml")
    # The composed config still holds the dgx_h100 preset: none of it survives.
    assert cluster == Cluster(**mine)
    # The study records the file by its absolute path, wherever it is started from next.
    assert scale.cluster_file == str(tmp_path / "mine.yaml")


def test_a_relative_path_starts_from_the_given_directory_else_this_one(composed, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    write_yaml(tmp_path / "sub" / "mine.yaml", {**preset("dgx_h100"), "name": "in_sub"})
    assert study(composed, tmp_path / "sub", "mine.yaml")[2].name == "in_sub"
    monkeypatch.chdir(tmp_path / "sub")
    raw = copy.deepcopy(composed)
    raw["scale"]["cluster_file"] = "mine.yaml"
    assert parse_study(raw)[2].name == "in_sub"
    absolute = str(tmp_path / "sub" / "mine.yaml")
    assert study(composed, REPO, absolute)[1].cluster_file == absolute


def test_numbers_are_read_as_hydra_reads_a_preset(composed, tmp_path):
    # Plain YAML 1.1 reads 4e2 as a string; Hydra's loader, and so the presets, read a number.
    text = (PRESETS / "dgx_h100.yaml").read_text().replace("inter_bw_GBps: 376.0", "inter_bw_GBps: 4e2")
    assert "inter_bw_GBps: 4e2" in text
    (tmp_path / "mine.yaml").write_text(text)
    assert study(composed, tmp_path, "mine.yaml")[2].inter_bw_GBps == 400.0


def test_a_shipped_preset_used_as_a_file_gives_the_preset(composed):
    for name in ("dgx_h100", "roce25_4gpu", "titanx_ib_2016", "big_basin_2017", "dgx1_v100", "dgx2h_v100"):
        assert study(composed, REPO, f"configs/cluster/{name}.yaml")[2] == parse_cluster(preset(name))


@pytest.mark.parametrize(
    "content, message",
    [
        ("name: lab\ndevice: h100_sxm\ngpus_per_node: 8: 9\n",
         "is not valid YAML: line 3, column 17: mapping values are not allowed here"),
        ("name: lab\ndevice: [h100_sxm\n", "is not valid YAML: line 3, column 1: expected ',' or ']'"),
        ("name: lab\nname: other\n", "is not valid YAML: line 2, column 1: found duplicate key name"),
        ("name: lab\ndevice: \x07\n",
         "is not valid YAML: line 2: character #x0007: special characters are not allowed"),
        (b"name: lab\xff\n", "is not UTF-8 text (byte 9); fix: save it as UTF-8 YAML"),
        ("", f"is empty, {NOT_A_MAPPING}"),
        ("# only a comment\n", f"is empty, {NOT_A_MAPPING}"),
        ("- name: lab\n- device: a100\n", f"holds a list, {NOT_A_MAPPING}"),
        ("dgx_h100\n", f"holds the single value 'dgx_h100', {NOT_A_MAPPING}"),
        ("name: lab\nlatency: ${nowhere}\n", "has a ${...} that does not resolve (Interpolation key "
         "'nowhere' not found; full_key: latency; object_type=dict); fix: write the value itself"),
    ],
    ids=["syntax", "unclosed", "duplicate", "control-char", "not-utf8", "empty", "comment-only", "list",
         "scalar", "interpolation"],
)
def test_a_file_that_is_not_a_cluster_mapping_is_one_line_naming_it(composed, tmp_path, content, message):
    path = tmp_path / "mine.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    said = one_line_error(lambda: study(composed, tmp_path, "mine.yaml"), ConfigError)
    assert said.startswith(f"scale.cluster_file=mine.yaml: {path}")
    assert message in said


def test_a_missing_file_says_where_it_was_looked_for(composed, tmp_path):
    said = one_line_error(lambda: study(composed, tmp_path, "nope.yaml"), ConfigError)
    assert said == (f"scale.cluster_file=nope.yaml: {tmp_path / 'nope.yaml'} does not exist (a relative path "
                    "starts from the directory ddtrain-scale runs in); fix: give the path of your cluster "
                    "YAML file")
    (tmp_path / "plain").write_text("x")
    said = one_line_error(lambda: study(composed, tmp_path, "plain/mine.yaml"), ConfigError)
    assert "does not exist" in said  # a path through a file, not a folder


@pytest.mark.parametrize("given, kind", [("folder", "a directory"), ("/dev/null", "not a regular file")])
def test_what_is_not_a_regular_file_is_refused(composed, tmp_path, given, kind):
    (tmp_path / "folder").mkdir()
    said = one_line_error(lambda: study(composed, tmp_path, given), ConfigError)
    assert said == (f"scale.cluster_file={given}: {tmp_path / given} is {kind}; fix: give the path of your "
                    "cluster YAML file")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"gpus": 8}, "unknown key cluster.gpus; cluster takes: " + ", ".join(FIELDS)),
        ({1: 8}, "unknown key cluster.1; cluster takes: "),
        ({"gpus_per_node": 0}, "cluster.gpus_per_node=0 must be > 0"),
        ({"intra_bw_GBps": "fast"}, "cluster.intra_bw_GBps='fast' is not a number"),
        ({"gpus_per_node": 7.5}, "cluster.gpus_per_node=7.5 is not an integer"),
        ({"inter_latency_us": -1.0}, "cluster.inter_latency_us=-1.0 must be >= 0"),
        ({"algorithm": "mesh"},
         "cluster.algorithm='mesh' is not allowed; choose one of: ring, tree, hierarchical"),
        ({"cv": -0.1}, "cluster.cv=-0.1 must be >= 0"),
        ({"node_slowdown": 0.0}, "cluster.node_slowdown=0.0 must be > 0"),
        ({"optimizer_slowdown": -1.0}, "cluster.optimizer_slowdown=-1.0 must be > 0"),
        ({"device": "h100x"}, "cluster.device='h100x' has no datasheet peak; choose one of: h100_sxm, "),
        ({"name": ["a", "b"]}, "cluster.name=['a', 'b'] is not a string"),
    ],
)
def test_a_bad_key_or_value_gives_the_presets_message_naming_the_file(composed, tmp_path, change, message):
    # The file is a preset changed by one key: its error is the preset path's, after the file's name.
    write_yaml(tmp_path / "mine.yaml", {**preset("dgx_h100"), **change})
    by_file = one_line_error(lambda: study(composed, tmp_path, "mine.yaml"), ConfigError)
    by_preset = one_line_error(lambda: study(composed, tmp_path, **{str(k): v for k, v in change.items()}),
                               ConfigError)
    assert by_file == f"scale.cluster_file=mine.yaml: {by_preset}"
    assert by_preset.startswith(message)


def test_a_missing_key_names_what_a_cluster_needs(composed, tmp_path):
    write_yaml(tmp_path / "mine.yaml", {k: v for k, v in preset("dgx_h100").items() if k != "inter_bw_GBps"})
    said = one_line_error(lambda: study(composed, tmp_path, "mine.yaml"), ConfigError)
    assert said.startswith("scale.cluster_file=mine.yaml: cluster.inter_bw_GBps is missing; cluster needs: "
                           "name, device, gpus_per_node")


def test_predicting_needs_a_device_in_the_file(composed, tmp_path):
    write_yaml(tmp_path / "here.yaml", preset("local"))
    said = one_line_error(lambda: study(composed, tmp_path, "here.yaml"), ConfigError)
    assert said == (f"scale.predict_only=true needs a cluster to predict for, but {tmp_path / 'here.yaml'} "
                    "has device: \"\" (the machine the study runs on, calibrated from measured runs); fix: "
                    "set its device to the workers' GPU, e.g. h100_sxm")
    raw = copy.deepcopy(composed)
    raw["scale"].update(predict_only=False, cluster_file="here.yaml")
    assert parse_study(raw, tmp_path)[2].device == ""  # measured studies calibrate such a cluster


@pytest.mark.parametrize(
    "overrides, problem",
    [
        (["cluster=/x/mine.yaml"], "cluster=/x/mine.yaml is a file path, but cluster= takes a preset name "
         "(big_basin_2017, dgx1_v100, dgx2h_v100, dgx_h100, local, roce25_4gpu, titanx_ib_2016); for your "
         "own cluster file use "
         "scale.cluster_file=/x/mine.yaml"),
        (["cluster=./mine.yaml"], "use scale.cluster_file=./mine.yaml"),
        (["cluster=mine.yml"], "use scale.cluster_file=mine.yml"),
        (["+cluster=../c/mine"], "use scale.cluster_file=../c/mine"),
        (["cluster=dgx_h100", "scale.cluster_file=mine.yaml"],
         "cluster=dgx_h100 and scale.cluster_file=mine.yaml both choose the cluster; fix: keep one of them"),
        (["scale.cluster_file=mine.yaml", "cluster.cv=0.05"],
         "cluster.cv=0.05 has no effect with scale.cluster_file=mine.yaml, which is the whole cluster "
         "section; fix: write cv: 0.05 in mine.yaml"),
        (["cluster=dgx_h100"], None),
        (["cluster=dgx_h100", "cluster.cv=0.05"], None),
        (["scale.cluster_file=mine.yaml", "model=convnet"], None),
        (["cluster.cv=0.05", "scale.cluster_file="], None),
        (["cluster=[unclosed"], None),  # Hydra's own parse error says it better
    ],
)
def test_cluster_overrides_that_cannot_work_are_one_line(overrides, problem):
    said = cluster_override_problem(overrides)
    if problem is None:
        assert said is None
    else:
        assert said is not None and "\n" not in said and problem in said


def test_the_readme_documents_every_key_and_its_example_is_a_valid_cluster(composed, tmp_path):
    readme = (PRESETS / "README.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \|", readme, re.M))
    assert rows == set(FIELDS)
    (example,) = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    (tmp_path / "example.yaml").write_text(example)
    cluster = study(composed, tmp_path, "example.yaml")[2]
    assert set(OmegaConf.create(example)) == set(FIELDS)  # complete: every key given
    assert cluster.device and cluster.cv is not None


@pytest.mark.parametrize("peak, local_gpu, needle", [
    ("p100_sxm2", "", "scale.peak=p100_sxm2 is the datasheet of a p100_sxm2, but this study runs on the CPU"),
    ("h100_sxm", "NVIDIA A100-SXM4-80GB", "but this study runs on a NVIDIA A100-SXM4-80GB"),
    ("nosuchgpu", "", "scale.peak='nosuchgpu' is not allowed; choose auto, measure, or one of: h100_sxm"),
])
def test_scale_peak_never_relabels_the_device_the_study_runs_on(peak, local_gpu, needle):
    from ddtrain.scaling.config import check_peak_names_this_device

    with pytest.raises(ConfigError) as err:
        check_peak_names_this_device(peak, "auto", local_gpu)
    assert needle in str(err.value)
    check_peak_names_this_device("auto", "auto", "")
    check_peak_names_this_device("measure", "auto", "")
    check_peak_names_this_device("h100_sxm", "auto", "NVIDIA H100 80GB HBM3")  # it is this GPU
