"""The stages' Ray Train trainer: which of Ray Train's default helpers it leaves out (no Ray needed to
build the callback list, so no job runs here; test_ddp runs one)."""

from __future__ import annotations

import pytest
import ray.train
from ray.train.torch import TorchTrainer
from ray.train.v2._internal.execution.scaling_policy import ResizeDecision, ScalingPolicy

from orchestrator.pipeline.stages.worker import NoAutoscalerScalingPolicy, StageTrainer

SCALING = ray.train.ScalingConfig(num_workers=1)


def callbacks(trainer) -> set[str]:
    return {type(c).__name__ for c in trainer._create_default_callbacks()}


def test_the_stage_trainer_starts_no_dataset_manager_and_on_a_local_ray_no_placement_group_cleaner():
    ray_default = callbacks(TorchTrainer(lambda: None, scaling_config=SCALING))
    cluster = callbacks(StageTrainer(lambda: None, scaling_config=SCALING, local_ray=False))
    local = callbacks(StageTrainer(lambda: None, scaling_config=SCALING, local_ray=True))
    # what is filtered exists in Ray's own list: a renamed callback would make the filter a no-op
    assert ray_default - cluster == {"DatasetsCallback"}
    assert cluster - local == {"PlacementGroupCleanerCallback"}
    assert {"BackendSetupCallback", "UserCallbackHandler"} <= local


def test_the_stage_trainer_refuses_datasets_it_could_not_serve():
    with pytest.raises(ValueError, match="no datasets"):
        StageTrainer(lambda: None, scaling_config=SCALING, datasets={"train": [1, 2]},
                     local_ray=False)


def test_the_local_scaling_policy_sizes_the_group_without_an_autoscaling_coordinator():
    # Ray's methods it replaces exist (a rename would bring the coordinator back)
    replaced = {"after_controller_start", "_maybe_send_resource_request"}
    assert replaced <= set(vars(NoAutoscalerScalingPolicy)) and all(hasattr(ScalingPolicy, m) for m in replaced)
    policy = NoAutoscalerScalingPolicy(ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}))
    policy.after_controller_start(None)
    # Ray's own policy asserts a coordinator client here
    decision = policy.make_decision_for_non_running_worker_group()
    assert decision == ResizeDecision(num_workers=2, resources_per_worker={"CPU": 0.5})
