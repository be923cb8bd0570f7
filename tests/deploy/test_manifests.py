"""The deploy files refer to real things: every manifest parses, entrypoints are valid ``cola`` command lines, Serve
import paths resolve to application builders, config files validate, and the clusters the manifests describe pass
the jobs' own up-front resource check.

Nothing here needs Kubernetes or Docker; the manifests are read as data.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cola_moderation.pipeline.cli.main import COMMANDS, parse_args
from cola_moderation.pipeline.jobs.ray_runtime import RAY_ENV_DEFAULTS, check_worker_resources
from cola_moderation.pipeline.runtime.config import PipelineConfig, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "deploy" / "kuberay"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
RAY_KINDS = {"RayService", "RayJob", "RayCluster"}


def documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def ray_resources() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path, doc in documents() if doc["kind"] in RAY_KINDS]


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return dict(doc["spec"]["rayClusterConfig"] if doc["kind"] == "RayService"
                else doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"])


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(group name, group spec, pod spec) of the head group and every worker group."""
    spec = cluster_spec(doc)
    yield "head", spec["headGroupSpec"], spec["headGroupSpec"]["template"]["spec"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group, group["template"]["spec"]


def config_maps() -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc["data"] for _, doc in documents() if doc["kind"] == "ConfigMap"}


def mounted_file(pod: dict[str, Any], container: dict[str, Any], path: str) -> str:
    """The text of ``path`` inside ``container`` when it comes from a ConfigMap volume of this pod."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        prefix = mount["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix):
            source = volumes[mount["name"]].get("configMap")
            assert source, f"{path} is mounted from volume {mount['name']!r}, which is not a ConfigMap"
            data = config_maps()[source["name"]]
            key = path[len(prefix):]
            assert key in data, f"ConfigMap {source['name']} has no key {key!r} (for {path})"
            return data[key]
    raise AssertionError(f"{path} is not under any volumeMount of container {container['name']!r}")


def pipeline_config(text: str, source: str) -> PipelineConfig:
    return parse_config(yaml.safe_load(text), source=source)


def test_there_are_manifests_for_serve_batch_and_stream() -> None:
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for _, doc in documents())
    assert ("RayService", "cola-moderation") in kinds
    jobs = {doc["metadata"]["name"]: doc["spec"]["entrypoint"] for _, doc in documents() if doc["kind"] == "RayJob"}
    assert sorted(shlex.split(entry)[1] for entry in jobs.values()) == ["batch", "stream"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_parses_with_kind_and_name(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} is empty"
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]["name"]


def test_config_map_config_validates_and_matches_the_repo_taxonomy() -> None:
    text = config_maps()["cola-config"]["config.yaml"]
    cluster = pipeline_config(text, "deploy/kuberay/config.yaml")
    reference = load_config(REPO / "configs" / "moderation.yaml")
    assert cluster.taxonomy == reference.taxonomy  # copied from configs/moderation.yaml: must not drift
    assert cluster.model.path == reference.model.path
    assert cluster.ray.worker_num_gpus > 0 and cluster.model.device.startswith("cuda")


def test_ray_version_matches_the_installed_ray() -> None:
    installed = importlib.metadata.version("ray")
    for path, doc in ray_resources():
        assert cluster_spec(doc)["rayVersion"] == installed, path


def test_job_entrypoints_are_valid_cola_command_lines() -> None:
    for path, doc in documents():
        if doc["kind"] != "RayJob":
            continue
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[0] == "cola" and argv[1] in COMMANDS, argv
        args = parse_args(argv[1:])  # exits (SystemExit) on an unknown flag or a bad value
        assert args.address is None  # Ray Jobs set RAY_ADDRESS for the driver; init_ray joins it
        head = next(pod for name, _, pod in pod_templates(doc) if name == "head")  # the driver runs on the head
        pipeline_config(mounted_file(head, head["containers"][0], args.config), f"{path.name}: {args.config}")
        if argv[1] == "batch":
            mounts = {m["mountPath"] for _, _, pod in pod_templates(doc) for m in pod["containers"][0]["volumeMounts"]}
            for location in (*args.input, args.output):  # read tasks run on workers, the sink on the head
                assert any(location.startswith(mount.rstrip("/") + "/") for mount in mounts), location


def test_serve_applications_import_real_builders_that_accept_the_mounted_config(tmp_path: Path) -> None:
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.api import Application

    for path, doc in documents():
        if doc["kind"] != "RayService":
            continue
        serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
        for app in serve_config["applications"]:
            module_name, _, attribute = app["import_path"].partition(":")
            builder = getattr(importlib.import_module(module_name), attribute)
            head = next(pod for name, _, pod in pod_templates(doc) if name == "head")
            text = mounted_file(head, head["containers"][0], app["args"]["config"])
            local = tmp_path / "config.yaml"
            local.write_text(text)
            # what `serve deploy` / RayService do with import_path + args (validation into the typed builder's model)
            built = call_user_app_builder_with_args_if_necessary(builder, {**app["args"], "config": str(local)})
            assert isinstance(built, Application), f"{path}: {app['import_path']} returned {type(built)}"
            for _, group, pod in pod_templates(doc):
                if group is not cluster_spec(doc)["headGroupSpec"]:
                    for container in pod["containers"]:
                        readiness = " ".join(container["readinessProbe"]["exec"]["command"])
                        assert f":{serve_config['http_options']['port']}/-/healthz" in readiness


def test_containers_carry_the_environment_and_probes_the_code_needs() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"apt-get install[^\n]*\bwget\b", dockerfile), "the probes call wget"
    for path, doc in ray_resources():
        for group_name, _, pod in pod_templates(doc):
            for container in pod["containers"]:
                where = f"{path.name} {group_name}/{container['name']}"
                env = {item["name"]: item.get("value") for item in container.get("env", [])}
                # the proxy's body/header guard (pipeline/jobs/http_guard.py) only runs where the nodes' environment
                # names it
                for key in ("RAY_USAGE_STATS_ENABLED", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO",
                            "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"):
                    assert env.get(key) == RAY_ENV_DEFAULTS[key], f"{where}: {key}"
                # loopback-only mode would make `ray start --address` refuse to join the head
                assert env.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0", where
                assert container["readinessProbe"]["exec"]["command"][:2] == ["bash", "-c"], where
                assert container["image"].startswith("cola-moderation:"), where
                limits = container["resources"]["limits"]
                requests = container["resources"]["requests"]
                gpus = int(limits.get("nvidia.com/gpu", 0))
                assert int(requests.get("nvidia.com/gpu", 0)) == gpus, f"{where}: GPU request != limit"
                assert container["image"].endswith("-gpu" if gpus else "-cpu"), where
    instructions = "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" not in instructions
    guard = RAY_ENV_DEFAULTS["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"]
    assert f"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH={guard}" in instructions
    module, _, attribute = guard.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute)), guard


def node_resources(doc: dict[str, Any], *, replicas_key: str) -> list[dict[str, float]]:
    """The Ray resources of each node of the cluster when every group has ``replicas_key`` pods."""
    nodes = []
    for name, group, pod in pod_templates(doc):
        limits = pod["containers"][0]["resources"]["limits"]
        params = group.get("rayStartParams", {})
        node = {"CPU": float(params.get("num-cpus", _cpus(limits["cpu"]))),
                "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}
        nodes += [node] * (1 if name == "head" else int(group[replicas_key]))
    return nodes


def _cpus(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def test_clusters_pass_the_jobs_resource_check() -> None:
    """The RayJobs' clusters (at minReplicas) hold what ``cola batch`` / ``cola stream`` check for at start; the
    RayService's (at maxReplicas) holds serve.max_replicas replicas."""
    from cola_moderation.pipeline.jobs.batch import READ_NUM_CPUS

    checked = 0
    for path, doc in ray_resources():
        head = next(pod for name, _, pod in pod_templates(doc) if name == "head")
        if doc["kind"] == "RayJob":
            argv = shlex.split(doc["spec"]["entrypoint"])
            config = pipeline_config(mounted_file(head, head["containers"][0], parse_args(argv[1:]).config), path.name)
            nodes = node_resources(doc, replicas_key="minReplicas")
            if argv[1] == "batch":
                check_worker_resources(config.ray, workers=config.ray.actor_pool_max,
                                       reserve_cpus=READ_NUM_CPUS + config.ray.decode_num_cpus, nodes=nodes)
            else:
                check_worker_resources(config.ray, workers=config.serve.max_replicas,
                                       reserve_cpus=config.stream.consumers * config.stream.consumer_num_cpus,
                                       nodes=nodes)
        else:
            args = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"][0]["args"]
            config = pipeline_config(mounted_file(head, head["containers"][0], args["config"]), path.name)
            check_worker_resources(config.ray, workers=config.serve.max_replicas,
                                   nodes=node_resources(doc, replicas_key="maxReplicas"))
            assert cluster_spec(doc)["enableInTreeAutoscaling"] is True  # the Ray autoscaler adds GPU pods
        checked += 1
    assert checked == len(ray_resources()) >= 3


def test_dockerfile_installs_like_dev_and_its_smoke_checks_resolve() -> None:
    text = DOCKERFILE.read_text()
    torch_pin = re.search(r"TORCH_SPEC:-([^}]+)\}", (REPO / "dev").read_text())
    assert torch_pin and f"ARG TORCH_SPEC={torch_pin.group(1)}" in text  # the same pinned torch
    assert text.index('"$TORCH_SPEC"') < text.index("pip install \"$(ls /dist/cola_moderation-")  # torch first
    assert "pip wheel --no-deps --wheel-dir /dist /src" in text and "pip install -e" not in text  # the wheel
    assert "--no-deps 'open-clip-torch" in text
    for modules in re.findall(r'python -c "import ([\w., ]+)"', text):
        for module in modules.split(","):
            importlib.import_module(module.strip())
    for config in re.findall(r"load_config\('([^']+)'\)", text):
        load_config(config)  # a bundled config name: the image has no source tree
    assert re.search(r"^FROM \$\{CUDA_IMAGE\} AS base-gpu$", text, re.M) and "ARG CUDA_IMAGE=nvidia/cuda:" in text


def test_dockerignore_keeps_what_the_image_needs() -> None:
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    needed = ["pyproject.toml", "README.md", "LICENSE", "dev", "operators/__init__.py", "connectors/__init__.py",
              "pipeline/cli/main.py", "configs/reference.yaml", "configs/moderation.yaml"]
    for name in needed:
        assert (REPO / name).exists(), name
        parts = Path(name).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        assert not any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) for pattern in patterns
                       for prefix in prefixes), f".dockerignore excludes {name}"


def readme_commands(program: str) -> list[list[str]]:
    """Command lines starting with ``program`` in the fenced code blocks of deploy/README.md."""
    text = (REPO / "deploy" / "README.md").read_text()
    lines = [line.split("  #")[0].strip() for block in re.findall(r"```sh\n(.*?)```", text, re.S)
             for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line.startswith(program + " ")]


def test_readme_cola_command_lines_parse() -> None:
    commands = readme_commands("cola")
    assert {argv[1] for argv in commands} >= {"batch", "stream", "serve"}
    for argv in commands:
        assert argv[1] in COMMANDS, argv
        parse_args(argv[1:])  # SystemExit on an unknown flag


def test_ray_start_options_exist() -> None:
    """`ray start` lines of the README, and every manifest's rayStartParams (KubeRay passes them as --key value)."""
    from ray.scripts.scripts import start

    for argv in readme_commands("ray"):
        assert argv[1] == "start", argv
        start.make_context("start", argv[2:])  # click raises NoSuchOption / BadParameter
    for _, doc in ray_resources():
        for group_name, group, _ in pod_templates(doc):
            params = group.get("rayStartParams", {})
            argv = [item for key, value in params.items() for item in (f"--{key}", str(value))]
            start.make_context("start", [*argv, *(["--head"] if group_name == "head" else ["--address", "h:1"])])
