"""The cluster configs: Ray's own launcher validation (offline, Ray notes 4.1), what matters in
them (a GPU group, a CPU group, the project installed on every node), no duplicates, and every
job command they show parsed by the parser the job scripts use (jobs/X.py is `mahler X`)."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from mahler_dist.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = ["ray_cluster.yaml", "cluster/local.yaml"]
ALL_CONFIGS = [*LAUNCHER, *(p.relative_to(REPO).as_posix() for p in sorted((REPO / "cluster/kuberay").glob("*.yaml")))]


def _load(path: str) -> dict:
    return yaml.safe_load((REPO / path).read_text())


@pytest.mark.parametrize("path", LAUNCHER)
def test_launcher_config_validates_and_installs_the_project(path):
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = _load(path)
    util.validate_config(util.prepare_config(config))
    setup = " ".join(config["setup_commands"])
    assert "requirements.txt" in setup and "install" in setup and "-e ." in setup
    assert config["file_mounts"] == {"~/mahler-dist": "."}   # `ray submit` uploads only the script


def test_default_cluster_has_a_cpu_head_and_autoscaled_gpu_and_cpu_groups():
    config = _load("ray_cluster.yaml")
    assert config["provider"]["type"] in ("aws", "gcp", "azure")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")
    gpu = [t for n, t in types.items() if n != config["head_node_type"] and t["node_config"]["InstanceType"].startswith(("g", "p"))]
    cpu = [t for n, t in types.items() if n != config["head_node_type"] and t["node_config"]["InstanceType"].startswith(("c", "m"))]
    assert gpu and cpu, types
    assert all(t["min_workers"] == 0 and t["max_workers"] > 0 for t in gpu + cpu)   # autoscaled from zero


def test_no_two_cluster_configs_are_the_same_and_each_says_why_it_differs():
    texts = {p: (REPO / p).read_text() for p in ALL_CONFIGS}
    assert len(set(texts.values())) == len(texts)
    for path, text in texts.items():
        if path != "ray_cluster.yaml":
            header = text.split("\napiVersion", 1)[0].split("\ncluster_name", 1)[0]
            assert re.search(r"differs|verbatim", header), f"{path}: its header does not say how it differs"


def job_commands(text: str) -> list[tuple[str, list[str]]]:
    """(job, its arguments) of every `jobs/X.py ...` command in a file, comments included; the
    arguments end at the line's end, a shell `&&`, or a comment."""
    text = text.replace("\\\n", " ")
    out = []
    for m in re.finditer(r"jobs/(\w+)\.py([^\n]*)", text):
        rest = m.group(2).split("&&")[0].split("  #")[0]
        args = shlex.split(rest)
        if args[:1] == ["--"]:        # `ray submit CONFIG jobs/x.py -- ARGS`
            args = args[1:]
        out.append((m.group(1), args))
    return out


@pytest.mark.parametrize("path", [*ALL_CONFIGS, "README.md"])
def test_job_commands_parse_with_the_jobs_own_parser(path):
    text = (REPO / path).read_text()
    if path.endswith("rayjob-train.yaml"):
        text = _load(path)["spec"]["entrypoint"].replace("&&", "\n")
    commands = [(job, args) for job, args in job_commands(text) if args and not args[0].startswith("...")]   # prose: "jobs/x.py ..."
    assert commands or path in ("cluster/kuberay/rayservice.yaml",), f"{path}: no job command found"
    parser = build_parser()
    for job, args in commands:
        assert (REPO / "jobs" / f"{job}.py").is_file(), f"{path}: jobs/{job}.py does not exist"
        try:
            parser.parse_args([job, *args])
        except SystemExit:
            pytest.fail(f"{path}: `jobs/{job}.py {' '.join(args)}` does not parse")


def test_rayjob_preprocesses_then_trains_on_ray_2_60():
    job = _load("cluster/kuberay/rayjob-train.yaml")
    assert job["kind"] == "RayJob"
    steps = [j for j, _ in job_commands(job["spec"]["entrypoint"].replace("&&", "\n"))]
    assert steps == ["preprocess", "train"]
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    assert "WANDB_API_KEY" not in job["spec"].get("runtimeEnvYAML", "")   # credentials come from a Secret


def test_raycluster_has_gpu_and_cpu_groups_that_autoscale():
    cluster = _load("cluster/kuberay/raycluster.yaml")
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["rayVersion"] == "2.60.0"
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu_limits["nvidia.com/gpu"] == "1" and int(gpu_limits["cpu"]) > 1
    assert "cpu" in groups and all(g["minReplicas"] == 0 for g in groups.values())
