"""What the Ray Train stages (sources, distillation) share: the ``TorchTrainer`` job, checkpoints
that a restarted worker resumes from, and rank 0's MLflow logging and progress lines."""

from __future__ import annotations

import logging
import signal
import tempfile
import threading
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy
from safetensors.torch import load_file, save_file

from ...runtime.ddp import NodeBoundTorchConfig
from ...runtime.logs import ticker
from ...spec.schema import Resources
from ...tracking import ATTEMPTS_TAG, NODE_TAG, RESTARTED_TAG, RunLogger, node_name
from .context import PipelineContext

TRAINABLE_FILE = "trainable.safetensors"
STATE_FILE = "train_state.pt"

log = logging.getLogger(__name__)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP's wrapper (or the model itself on one worker)."""
    return getattr(model, "module", model)


def report_checkpoint(model: torch.nn.Module, step: int, metrics: dict[str, float], state: dict,
                      files: dict[str, dict[str, torch.Tensor]]) -> None:
    """ray.train.report from every worker (it is a barrier); rank 0 attaches the stage's output files
    plus what a restarted worker needs: the trainable weights and the optimizer/schedule state."""
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics)
        return
    trainable = {n: p for n, p in unwrap(model).named_parameters() if p.requires_grad}
    with tempfile.TemporaryDirectory() as tmp:
        for name, tensors in {**files, TRAINABLE_FILE: trainable}.items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(Path(tmp) / name))
        torch.save({"step": step, **state}, Path(tmp) / STATE_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def resume(model: torch.nn.Module, logger: RunLogger | None, tag: str) -> tuple[int, dict | None]:
    """Restore the last checkpoint after a worker failure or an interrupted run: (step, optimizer state).

    Rank 0 counts attempts on the MLflow run (tag ``ATTEMPTS_TAG``), so a restart is recorded even
    when it had no checkpoint to start from.
    """
    checkpoint = ray.train.get_checkpoint()
    step, state = 0, None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            unwrap(model).load_state_dict(load_file(str(Path(d) / TRAINABLE_FILE)), strict=False)
            state = torch.load(Path(d) / STATE_FILE, weights_only=True)
        step = state.pop("step")
    if logger:
        attempts = int(logger.client.get_run(logger.run_id).data.tags.get(ATTEMPTS_TAG, 0)) + 1
        logger.set_tags({ATTEMPTS_TAG: attempts})
        if attempts > 1 or checkpoint is not None:
            logger.log_metrics(step, {"restarted_from_step": step})
            logger.set_tags({RESTARTED_TAG: "true"})
    if checkpoint is not None:
        log.info("[%s] resumed from the checkpoint at step %d", tag, step)
    return step, state


def rank0_logger(config: dict) -> RunLogger | None:
    """Only rank 0 logs to MLflow, into the run the driver opened for this job; it also tags the run
    with the node the training ran on (the driver opened it from wherever the graph node ran)."""
    if ray.train.get_context().get_world_rank() != 0:
        return None
    logger = RunLogger(config["ctx"].tracking.uri, config["run_id"])
    logger.set_tags({NODE_TAG: node_name()})
    return logger


def scaling(res: Resources) -> ray.train.ScalingConfig:
    return ray.train.ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                   resources_per_worker=res.bundle())


class NoAutoscalerScalingPolicy(FixedScalingPolicy):
    """Ray Train's fixed-size policy without its resource requests to Ray Data's autoscaling
    coordinator: a detached actor, one more process importing Ray Train and Ray Data (8-10 CPU-s in
    profiles of the demo), that each job's controller calls every 20 s. A Ray this run started has
    no autoscaler to pass the requests to. (Ray's only other sender of a request is
    ``after_controller_start``.)"""

    def after_controller_start(self, train_run_context) -> None:
        pass

    def _maybe_send_resource_request(self) -> None:
        pass


class StageTrainer(ray.train.torch.TorchTrainer):
    """Ray Train 2.60's ``TorchTrainer`` without the helper actors it starts that the stages do not
    need, each a process that imports Ray Train (4-10 s of CPU in the demo's profile), and without
    leaving the job's controller alive after ``fit``.

    - The dataset manager serves Ray Data shards to the workers (and makes each of them import Ray
      Data): the stages pass no datasets.
    - On a Ray this run started (``local_ray``), the placement-group cleaner. It asks the State API
      every second whether the controller died; that API lives in the dashboard, which such a Ray
      does not start, so every call fails and it logs a warning instead, for as long as the job runs.
    - On a Ray this run started, the autoscaling coordinator (``NoAutoscalerScalingPolicy``).

    A cluster keeps the last two. Ray Train has no switch for any of them, so the default callback
    list is filtered and the controller gets another scaling policy; a unit test fails if a Ray
    upgrade renames what is filtered, and test_ddp if the coordinator starts again.
    """

    def __init__(self, *args, local_ray: bool, **kwargs):
        self._local_ray = local_ray
        self._dropped = (DatasetsCallback, *((PlacementGroupCleanerCallback,) if local_ray else ()))
        super().__init__(*args, **kwargs)
        if self.datasets:
            raise ValueError("StageTrainer starts no dataset manager: it takes no datasets")

    def _create_default_callbacks(self) -> list:
        return [c for c in super()._create_default_callbacks() if not isinstance(c, self._dropped)]

    def _initialize_and_run_controller(self, **controller_init_kwargs) -> ray.train.Result:
        if self._local_ray:
            controller_init_kwargs["scaling_policy"] = NoAutoscalerScalingPolicy(self.scaling_config)
        return super()._initialize_and_run_controller(**controller_init_kwargs)

    def fit(self) -> ray.train.Result:
        # fit() installs a SIGINT handler that holds the job's controller actor, which then outlives the
        # job, polling, for as long as the calling process lives; the previous handler lets it exit
        sigint = signal.getsignal(signal.SIGINT)
        try:
            return super().fit()
        finally:
            if threading.current_thread() is threading.main_thread():  # the only thread fit() installs it from
                signal.signal(signal.SIGINT, sigint)


def fit_trainer(ctx: PipelineContext, loop, config: dict, res: Resources, key: str,
                max_failures: int) -> ray.train.Result:
    """One Ray Train job named after the stage's fingerprint, so a restarted pipeline resumes it."""
    return StageTrainer(
        loop, train_loop_config=config, scaling_config=scaling(res), torch_config=NodeBoundTorchConfig(),
        run_config=ray.train.RunConfig(name=ctx.job_name(key), storage_path=ctx.storage,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures)),
        local_ray=ctx.local_ray,
    ).fit()


def step_logger(logger: RunLogger | None, tag: str, steps: int):
    """``on_step`` for a Train worker: rank 0 buffers each step's loss and ticks the live display,
    other ranks do neither."""
    if logger is None:
        return lambda step, loss: None
    return ticker(log, tag, steps, lambda step, loss: logger.metric(step, "train_loss", loss))


def on_rank0(rank: int, evaluate_fn):
    """Validation on rank 0 only: every rank holds the same weights, and only rank 0's metrics are logged."""
    return evaluate_fn if rank == 0 else dict


def checkpoint_tensors(result: ray.train.Result, *names: str) -> list[dict[str, torch.Tensor]]:
    """The named files of a finished job's last checkpoint."""
    with result.checkpoint.as_directory() as d:
        return [load_file(str(Path(d) / n)) for n in names]

