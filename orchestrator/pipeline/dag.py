"""The Ray task graph: sources (fan-out) -> distill (join) -> targets (fan-out) -> report (join),
with each target's baselines started from the sources beside the distillation (on a local Ray, only as
many as fit beside it; a target given none starts them after it), the joint_multitask
ablation's student beside the sources when a spec asks for it, and with ``seed_scope: pipeline``
(the default) one sources-and-distill branch per seed.

Built from remote tasks passing ``ObjectRef`` arguments, which Ray resolves to values before a task
starts, so each node runs as soon as its inputs exist. A node reuses its stage's earlier result when
the cache has one (``cache``), else runs the stage (``stages``); nodes reserve no CPU so they never
starve the jobs they launch.
"""

from __future__ import annotations

import contextlib
import logging
from typing import NamedTuple

import pandas as pd
import ray

from ..method.distill import SharedPrompt, Teacher
from ..results import selection
from ..runtime.logs import in_ray_worker
from ..spec.methods import upstream
from ..tracking import RunLogger
from . import cache
from .resources import baseline_trials_beside_distill
from .stages import distill, source, target
from .stages.context import PipelineContext

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
@in_ray_worker
def source_node(ctx: PipelineContext, task: str) -> Teacher:
    return cache.reuse_source(ctx, task) or source.run_source(ctx, task)


@ray.remote(num_cpus=0)
@in_ray_worker
def distill_node(ctx: PipelineContext, *teachers: Teacher) -> SharedPrompt:
    return cache.reuse_distill(ctx) or distill.run_distill(ctx, list(teachers))


@ray.remote(num_cpus=0)
@in_ray_worker
def joint_node(ctx: PipelineContext) -> SharedPrompt:
    return cache.reuse_distill(ctx, cache.JOINT) or distill.run_distill(ctx, None)


@ray.remote(num_cpus=0)
def starts_node(seed: int, shared: SharedPrompt | None, joint: SharedPrompt | None, *teachers: Teacher,
                after: SharedPrompt | None = None) -> target.Starts:
    """``after``: a distillation these starts wait for but do not hold (the baselines', where the Ray is
    too small to train them beside it)."""
    return target.Starts(seed, shared, joint, {t.task: t for t in teachers})


@ray.remote(num_cpus=0)
@in_ray_worker
def baselines_node(ctx: PipelineContext, task: str, max_concurrent: int | None, *starts: target.Starts) -> list[dict]:
    """One target's baseline and ablation sweeps. They start from the teachers (and the joint_multitask
    student), never from the shared prompt, so they can train while the distillation does."""
    if cache.recorded_target(ctx, task) is not None:
        return []  # target_node reuses the whole target, these sweeps included
    return target.run_baseline_sweeps(ctx, task, {s.seed: s for s in starts}, max_concurrent)


@ray.remote(num_cpus=0)
@in_ray_worker
def target_node(ctx: PipelineContext, task: str, baselines: list[ray.ObjectRef], *starts: target.Starts) -> list[dict]:
    """One target's MPT sweeps, joined with its baselines' rows for the scoring of each method's choice.

    ``baselines`` holds the baselines node's result inside a list: Ray resolves only top-level
    arguments before a task starts, so the MPT sweep starts when the distillation ends, whether or not
    the baselines have finished.
    """
    reused = cache.reuse_target(ctx, task)
    if reused is not None:
        return reused
    rows = target.run_target(ctx, task, {s.seed: s for s in starts}, baselines[0])
    cache.record_target(ctx, task, rows)
    return rows


@ray.remote(num_cpus=0)
@in_ray_worker
def report_node(ctx: PipelineContext, parent_run_id: str, *target_rows: list[dict]) -> pd.DataFrame:
    table = selection.results_table([row for rows in target_rows for row in rows])
    selection.publish(table, RunLogger(ctx.tracking.uri, parent_run_id))
    return table


def node_env(local_ray: bool) -> dict:
    """The runtime env of every node of the graph.

    More jobs than CPUs is normal (sources queue for their turn), so Ray Train's default 60 s wait for
    a worker group, which fails and retries noisily, is lifted. And Ray Train's helper actors call
    ``ray.init()`` without an address: with a second Ray on the machine that fails ("multiple active
    Ray instances"), so they are told which cluster is theirs. The nodes that start no Train job get
    it too: Ray reuses an idle worker process only for the same runtime env, and a fresh one spends
    about 8 s of CPU importing torch, Ray Train and mlflow before the node can start. On a local Ray
    (one node, which no autoscaler drains) each Train job's preemption watcher, one more process that
    polls every 5 s, has nothing to watch, so it is not started.
    """
    env = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(7 * 24 * 3600),
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    if local_ray:
        env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return {"env_vars": env}


class Branch(NamedTuple):
    """One seed's sources and distillation as what target trials start from, and its training nodes."""

    mpt: ray.ObjectRef  # Starts with the shared prompt
    baselines: ray.ObjectRef  # Starts without it, ready when the sources (and joint student) are
    baselines_after_distill: ray.ObjectRef | None  # the same, ready only when the distillation ends
    trainers: list[ray.ObjectRef]  # for ``stop``


def seed_branch(ctx: PipelineContext, env: dict, baselines_wait: bool) -> Branch:
    """Sources (fan-out) -> distill (join), and the joint_multitask student when asked for (it needs no
    teachers: it trains beside the sources), gathered as what target trials start from: with the
    shared prompt for MPT, and without it for the baselines, which then need not wait for the
    distillation; with ``baselines_wait``, also without it but after it, for baselines that must."""
    teachers = [source_node.options(runtime_env=env).remote(ctx, task) for task in ctx.spec.sources]
    shared = distill_node.options(runtime_env=env).remote(ctx, *teachers)
    joint = joint_node.options(runtime_env=env).remote(ctx) if "joint" in upstream(ctx.spec.target.baselines) else None

    def baseline_starts(after: ray.ObjectRef | None) -> ray.ObjectRef:
        return starts_node.options(runtime_env=env).remote(ctx.spec.seed, None, joint, *teachers, after=after)

    return Branch(starts_node.options(runtime_env=env).remote(ctx.spec.seed, shared, joint, *teachers),
                  baseline_starts(None), baseline_starts(shared) if baselines_wait else None,
                  [*teachers, shared, *([joint] if joint else [])])


def run_pipeline(ctx: PipelineContext) -> pd.DataFrame:
    spec = ctx.spec
    env = node_env(ctx.local_ray)
    # seed_scope pipeline: one branch per seed, each seed's trials starting from its own shared prompt
    seeds = spec.seed_list() if spec.seed_scope == "pipeline" else [spec.seed]
    # a local Ray has the CPUs it started with (a cluster's autoscaler adds nodes for a job that
    # waits): there each target's baseline sweep gets the trials that fit beside the distillations
    beside = baseline_trials_beside_distill(spec, ray.cluster_resources(), len(seeds)) if ctx.local_ray else {}
    if beside:
        log.info("[pipeline] baseline sweeps beside the distillation: %s", ", ".join(
            f"{task} {f'at most {n} trial(s) at once' if n else 'none (it starts when the distillation ends)'}"
            for task, n in beside.items()))
    branches = [seed_branch(ctx.for_seed(s) if len(seeds) > 1 else ctx, env, 0 in beside.values()) for s in seeds]
    mpt_starts, trainers = [b.mpt for b in branches], [ref for b in branches for ref in b.trainers]
    baselines = {task: baselines_node.options(runtime_env=env).remote(
                     ctx, task, beside.get(task) or spec.target.max_concurrent_trials,
                     *[b.baselines_after_distill if beside.get(task) == 0 else b.baselines for b in branches])
                 for task in spec.targets}
    targets = [target_node.options(runtime_env=env).remote(ctx, task, [baselines[task]], *mpt_starts)
               for task in spec.targets]
    try:
        return ray.get(report_node.options(runtime_env=env).remote(ctx, ctx.tracking.parent_run_id, *targets))
    except BaseException:
        stop([*trainers, *baselines.values(), *targets])
        raise


def stop(nodes: list[ray.ObjectRef]) -> None:
    """Stop the nodes still running when the pipeline fails: the baselines train beside the
    distillation, the joint student beside both and the targets beside each other, so one failure
    leaves others mid-job. Force-cancelling a node kills its process, and with it the Train jobs and
    Tune trials it started; the driver then marks their runs KILLED. Each result is then read, so
    that Ray does not print it later as an error nobody handled."""
    for ref in nodes:
        ray.cancel(ref, force=True)
    for ref in nodes:
        with contextlib.suppress(Exception):
            ray.get(ref, timeout=60)
