"""deploy/kubernetes: the kustomization renders, every object passes the Kubernetes schemas
offline (kubernetes-validate --strict), and the pieces agree with each other and with streamer:
shard count, DNS names, ports, probes, the site config for every shard, the command lines."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamer.cli import build_parser
from streamer.config import parse_config
from streamer.sharding import Shard, assign, expand_shards, resolve_shard

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
# What the renderer below understands; a kustomization using more must extend it (or the test).
KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources"}


def render() -> list[dict[str, Any]]:
    """`kustomize build` for a kustomization that only lists resources (checked): the objects
    of every listed file, in order. kustomize itself is not a Python package, so this keeps
    the test offline; where kubectl is installed, its build is compared below."""
    kust = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert set(kust) <= KUSTOMIZATION_KEYS, set(kust) - KUSTOMIZATION_KEYS
    assert kust["kind"] == "Kustomization"
    objects = []
    for name in kust["resources"]:
        objects += [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]
    listed = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == set(kust["resources"]), "every manifest is in the kustomization"
    return objects


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render()}


def test_manifests_pass_the_kubernetes_schemas(tmp_path: Path) -> None:
    rendered = tmp_path / "all.yaml"
    rendered.write_text(yaml.safe_dump_all(render()))
    tool = shutil.which("kubernetes-validate", path=os.path.dirname(sys.executable))
    assert tool is not None, "kubernetes-validate is a test dependency"
    res = subprocess.run([tool, "--strict", str(rendered)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(" passed ") == len(render()), res.stdout


def test_kubectl_kustomize_builds_the_same_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # not on every machine: the render above is then the only build
        pytest.skip("kubectl not installed")
    res = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert sorted(yaml.safe_load_all(res.stdout), key=key) == sorted(render(), key=key)


def _shards(objects: dict[tuple[str, str], dict[str, Any]]) -> int:
    return int(objects[("ConfigMap", "streamer-shards")]["data"]["STREAMER_SHARDS"])


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any]
    (c,) = obj["spec"]["template"]["spec"]["containers"]
    return c


def test_statefulset_shards(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    sts = objects[("StatefulSet", "streamer")]
    svc = objects[("Service", sts["spec"]["serviceName"])]
    assert svc["spec"]["clusterIP"] == "None"  # headless: per-pod DNS names
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["replicas"] == _shards(objects)
    pod = sts["spec"]["template"]
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    c = _container(sts)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= ports.keys()
    # Ready follows /healthz (cameras, detections pairing, shedding); alive only asks that the
    # event loop answers (/metrics): a dead detector pool must not restart every shard.
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert volumes[mounts["/config"]]["configMap"]["name"] == "streamer-site"
    # The preview token comes from a Secret the user makes, mounted where the config reads it.
    site = yaml.safe_load(objects[("ConfigMap", "streamer-site")]["data"]["streamer.yaml"])
    token_dir = str(Path(site["preview"]["token_file"]).parent)
    assert volumes[mounts[token_dir]]["secret"]["secretName"] == "streamer-preview-token"
    assert ("Secret", "streamer-preview-token") not in objects, "never commit the token"

    # The command line is streamer's, and --shard auto finds each pod's shard.
    args = build_parser().parse_args(c["args"])
    assert args.command == "run" and args.config == "/config/streamer.yaml"
    env_names = {e["name"] for e in c["env"]}
    assert {"POD_NAME", "STREAMER_SHARDS"} <= env_names
    n = _shards(objects)
    for i in range(n):
        env = {"POD_NAME": f"{sts['metadata']['name']}-{i}", "STREAMER_SHARDS": str(n)}
        assert resolve_shard(args.shard, env) == Shard(i, n)


def _site(objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path) -> dict[str, Any]:
    """The site config, its token_file pointed at a stand-in for the mounted Secret."""
    site: dict[str, Any] = yaml.safe_load(
        objects[("ConfigMap", "streamer-site")]["data"]["streamer.yaml"]
    )
    token = tmp_path / "token"
    token.write_text("a-token-from-the-secret\n")
    site["preview"]["token_file"] = str(token)
    return site


def test_site_config_serves_every_camera_once_and_advertises_dns_names(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    site = _site(objects, tmp_path)
    n = _shards(objects)
    served: list[str] = []
    ports = {
        p["name"]: p["containerPort"]
        for p in _container(objects[("StatefulSet", "streamer")])["ports"]
    }
    for i in range(n):
        cfg = parse_config(site, Shard(i, n))
        served += [s.id for s in cfg.sources]
        assert cfg.detections.reply_to == f"tcp://streamer-{i}.streamer:{ports['detections']}"
        assert cfg.metrics is not None and cfg.metrics.port == ports["metrics"]
        assert cfg.metrics.host == "0.0.0.0"  # the kubelet's probes come from the node
        assert cfg.preview is not None  # the page and API want the token:
        assert cfg.preview.token == "a-token-from-the-secret"
        assert cfg.tap is not None and cfg.tap.bind.endswith(f":{ports['tap']}")
    ids = [s["id"] for s in site["sources"]]
    assert sorted(served) == sorted(ids)
    assert set(assign(ids, n).values()) == set(range(n)), "a shard would serve nothing"


def test_detectors_and_workers_reach_every_shard(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    n = _shards(objects)
    site = parse_config(_site(objects, tmp_path))
    sts = objects[("StatefulSet", "streamer")]
    ports = {p["name"]: p["containerPort"] for p in _container(sts)["ports"]}
    names = [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}" for i in range(n)]
    ocr_push = next(p for p in site.publish if p.mode == "push")
    assert ocr_push.bind.endswith(f":{ports['crops-ocr']}")
    for kind, flag, port in (
        (("Deployment", "detector"), "tap", ports["tap"]),
        (("Deployment", "ocr-worker"), "crops", ports["crops-ocr"]),
    ):
        c = _container(objects[kind])
        refs = [
            e["valueFrom"]["configMapKeyRef"] for e in c["env"] if e["name"] == "STREAMER_SHARDS"
        ]
        assert refs == [{"name": "streamer-shards", "key": "STREAMER_SHARDS"}]
        args = build_parser().parse_args(c["args"])
        assert args.pull  # a pool: each frame (crop) to one replica
        got = expand_shards(getattr(args, flag), n)
        assert got == [f"tcp://{name}:{port}" for name in names]
        pod = objects[kind]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert c["securityContext"]["readOnlyRootFilesystem"] is True


def _selects(selector: dict[str, Any], obj: dict[str, Any]) -> bool:
    labels = obj["spec"]["template"]["metadata"]["labels"]
    return bool(selector["matchLabels"].items() <= labels.items())


def test_network_policy_lets_each_port_in_only_from_its_clients(
    objects: dict[tuple[str, str], dict[str, Any]],
) -> None:
    policy = objects[("NetworkPolicy", "streamer-shards")]["spec"]
    sts = objects[("StatefulSet", "streamer")]
    assert _selects(policy["podSelector"], sts)
    assert policy["policyTypes"] == ["Ingress"]
    ports = {p["name"] for p in _container(sts)["ports"]}
    allowed: dict[str, list[dict[str, Any]]] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            assert port["port"] in ports, port
            allowed.setdefault(port["port"], []).extend(rule["from"])
    assert allowed.keys() == ports, "every port has its rule, none is open to all"
    for port, client in (
        ("tap", "detector"),
        ("detections", "detector"),
        ("crops-ocr", "ocr-worker"),
    ):
        (peer,) = allowed[port]
        assert _selects(peer["podSelector"], objects[("Deployment", client)])
        assert not _selects(
            peer["podSelector"],
            objects[("Deployment", "ocr-worker" if client == "detector" else "detector")],
        )
    for port in ("preview", "metrics"):
        (peer,) = allowed[port]
        assert set(peer) == {"namespaceSelector"}, "not every pod of the namespace"


CAMERAS_PER_CORE = 2.0  # 1080p30, raw BGR crops, with headroom: docs/scaling.md "Sizing a site"
MIB_PER_CAMERA = 64  # ~50 MB measured, plus the base below
BASE_MIB = 128


def _cpu(text: str) -> float:
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _mib(text: str) -> int:
    units = {"Mi": 1, "Gi": 1024}
    return int(text[:-2]) * units[text[-2:]]


def test_shard_resources_cover_the_busiest_shard(
    objects: dict[tuple[str, str], dict[str, Any]], tmp_path: Path
) -> None:
    """Rendezvous hashing is uneven: every pod gets what the busiest shard needs."""
    site = _site(objects, tmp_path)
    n = _shards(objects)
    busiest = max(len(parse_config(site, Shard(i, n)).sources) for i in range(n))
    resources = _container(objects[("StatefulSet", "streamer")])["resources"]
    assert _cpu(resources["limits"]["cpu"]) >= busiest / CAMERAS_PER_CORE, busiest
    assert _cpu(resources["requests"]["cpu"]) >= busiest / CAMERAS_PER_CORE, busiest
    assert _mib(resources["limits"]["memory"]) >= BASE_MIB + MIB_PER_CAMERA * busiest, busiest
