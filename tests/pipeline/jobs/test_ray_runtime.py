from __future__ import annotations

import pytest

from cola_moderation.pipeline.jobs.ray_runtime import ClusterResourceError, check_worker_resources, worker_options
from cola_moderation.pipeline.runtime.ray_config import RayConfig

TWO_CPU = [{"CPU": 2.0, "memory": 1e9}]


def test_gpu_on_cpu_only_cluster_fails_naming_the_key() -> None:
    with pytest.raises(ClusterResourceError, match=r"ray.worker_num_gpus=1.0.*has no GPU"):
        check_worker_resources(RayConfig(worker_num_gpus=1), workers=1, nodes=TWO_CPU)


def test_pool_that_starves_the_decode_tasks_is_refused() -> None:
    with pytest.raises(ClusterResourceError, match="would hang"):
        check_worker_resources(RayConfig(worker_num_cpus=2), workers=1, reserve_cpus=0.5, nodes=TWO_CPU)
    check_worker_resources(RayConfig(worker_num_cpus=1), workers=1, reserve_cpus=0.5, nodes=TWO_CPU)


def test_too_many_workers() -> None:
    with pytest.raises(ClusterResourceError, match="3 workers x 1.0 CPU exceed"):
        check_worker_resources(RayConfig(worker_num_cpus=1), workers=3, nodes=TWO_CPU)


def test_custom_resource_must_exist_on_some_node() -> None:
    config = RayConfig(worker_resources={"model_node": 1})
    with pytest.raises(ClusterResourceError, match="ray.worker_resources.model_node=1"):
        check_worker_resources(config, workers=1, nodes=TWO_CPU)
    check_worker_resources(config, workers=1, nodes=[*TWO_CPU, {"CPU": 2.0, "model_node": 1.0}])
    assert worker_options(config) == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"model_node": 1}}


def test_fractional_gpus_share_one_gpu() -> None:
    check_worker_resources(RayConfig(worker_num_gpus=0.5, worker_num_cpus=0.5), workers=2,
                           nodes=[{"CPU": 2.0, "GPU": 1.0}])


def test_scaling_headroom_is_a_warning_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    config = RayConfig(worker_num_cpus=1)
    with caplog.at_level("WARNING"):
        check_worker_resources(config, workers=1, max_workers=4, reserve_cpus=0.5, nodes=TWO_CPU)
    assert "configured to scale to 4" in caplog.text
