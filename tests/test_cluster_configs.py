"""cluster.yaml against Ray's autoscaler schema; k8s/ manifests against the KubeRay fields we use."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_cluster_yaml_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(cfg)))  # raises on any schema violation
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and types["head"]["resources"] == {"CPU": 0}
    for name in ("cpu_build", "gpu_infer", "gpu_train"):
        assert 0 <= types[name]["min_workers"] <= types[name]["max_workers"]
    start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start  # the Jobs API is not open to the world
    for perm in cfg["provider"]["security_group"]["IpPermissions"]:
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in perm["IpRanges"])
        assert perm["FromPort"] not in (8265, 6379, 10001)
    setup = " ".join(cfg["setup_commands"])
    assert "--require-hashes requirements.lock" in setup
    # Without bytecode each Ray worker compiles ray and torch at start (docs/operations.md).
    assert "--compile-bytecode" in setup
    assert "MALLOC_MMAP_THRESHOLD_" in start


def _pods(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    return groups


def _check_raycluster_spec(spec: dict) -> None:
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert isinstance(head["rayStartParams"], dict)
    for name, group in _pods(spec):
        if name != "head":
            assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
            assert isinstance(group["rayStartParams"], dict)
        pod = group["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        res = container["resources"]
        assert (
            set(res) == {"requests", "limits"}
            and res["requests"]["cpu"]
            and res["limits"]["memory"]
        )
        gpus = res["limits"].get("nvidia.com/gpu")
        assert gpus == res["requests"].get("nvidia.com/gpu"), (
            f"{name}: GPU requests must equal limits"
        )
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]  # from a Secret, not inline
        assert not any("AWS_SECRET" in k or "PASSWORD" in k for k in env)


def test_kuberay_manifests_have_the_fields_kuberay_needs():
    (cluster,) = _docs(ROOT / "k8s" / "raycluster.yaml")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    _check_raycluster_spec(cluster["spec"])
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    gpu = groups["gpu-infer"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1"

    (job,) = _docs(ROOT / "k8s" / "rayjob-build.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["spec"]["entrypoint"].startswith("python -m jobs.build_dataset --config ")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    _check_raycluster_spec(job["spec"]["rayClusterSpec"])

    (cron,) = _docs(ROOT / "k8s" / "nightly-refresh.yaml")
    assert (cron["apiVersion"], cron["kind"]) == ("batch/v1", "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"  # one writer per embeddings store
    assert len(cron["spec"]["schedule"].split()) == 5
    cmd = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["mmpipe", "submit", "refresh"] and "--follow" in cmd
    assert "mmpipe-head-svc:8265" in " ".join(cmd)  # the RayCluster's in-cluster Service


@pytest.mark.parametrize("name", ["build.yaml", "refresh.yaml"])
def test_the_configmap_configs_validate_with_the_jobs_own_models(name, tmp_path):
    from pipeline.submit.package import validate_config

    (cm,) = _docs(ROOT / "k8s" / "configs.yaml")
    path = tmp_path / name
    path.write_text(cm["data"][name])
    validate_config("build" if name == "build.yaml" else "refresh", str(path))


def test_every_yaml_in_the_repository_parses_safely():
    files = [ROOT / "cluster.yaml", *ROOT.glob("k8s/*.yaml"), *ROOT.glob("jobs/configs/*.yaml")]
    assert len(files) >= 10
    for f in files:
        assert _docs(f), f
