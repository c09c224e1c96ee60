"""What the orchestrator costs over the same work done plainly: a measurement, not a test.

P1: the spec's work (every source prompt, the distillation, every target trial of the full grid to
the full step budget, each method's chosen trial reloaded and scored) as a plain sequential loop in
one process without Ray or MLflow, then `python -m orchestrator run SPEC --no-cache` on a fresh
MLflow store; both wall times, and each phase of both (the orchestrator's read back from MLflow).
P2: training steps per second of each source, orchestrator against plain loop at the same torch
thread count: one source job at a time holding every CPU (a second, short orchestrator run), and
with P1, as the spec runs them (several jobs sharing the CPUs). P3: peak RSS of the distillation
loop at K = 2, 4 and 8 source prompts. P4: the steps ASHA ran against the full grid's, and the
best MPT validation of each (``--p4-set`` gives a second orchestrator run for it, e.g. an ASHA sweep
over a wider grid). Linux only (/proc), CPU only:

    PYTHONPATH=. python bench/overhead.py [--spec pipelines/demo.yaml] [--set KEY=VALUE ...]
        [--only P1,P2,P3,P4] [--p4-set KEY=VALUE ...] [--p3-steps 10] [--out DIR]

Markdown tables go to stdout, one progress line per phase to stderr. The orchestrator runs with the
temp dir as its working directory (ray_results lands there), so a spec's relative paths to local
task files do not resolve: use absolute ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from orchestrator.search import SearchSpace, best_configurations
from orchestrator.spec_loading import load_spec

REPO = Path(__file__).resolve().parents[1]
PARTS = ("P1", "P2", "P3", "P4")
# P2's second run: each source job holds every CPU, so they train one after the other, as the plain loop does
P2_ALONE = [f"source.resources.cpus_per_worker={os.cpu_count()}", "seeds=[0]", "target.baselines=[]"]


def progress(message: str) -> None:
    print(f"[overhead] {message}", file=sys.stderr, flush=True)


def threads_for(resources) -> int:
    """The torch threads of a Ray worker holding ``cpus_per_worker`` CPUs: Ray sets OMP_NUM_THREADS
    to max(1, floor(CPUs)) in each worker, so a half-CPU worker runs on one thread."""
    return max(1, math.floor(resources.cpus_per_worker))


def rank_mean(loss_of_rank, world: int):
    """DDP's gradient in one process: the mean of each rank's batch loss."""
    return sum(loss_of_rank(r) for r in range(world)) / world


def proc_status_mib(key: str) -> float:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key + ":"))
    return int(line.split()[1]) / 1024


class Clock:
    """One unit of work (a source, the distillation, a trial): start, first and last step, end."""

    def __init__(self, stage: str, task: str, **fields):
        self.unit = {"stage": stage, "task": task, **fields, "start": time.time(), "steps": []}

    def on_step(self, step: int, loss: float) -> None:
        self.unit["steps"].append((step, time.time()))

    def done(self, value: float | None, **fields) -> dict:
        steps = self.unit.pop("steps") or [(0, self.unit["start"])]  # a reload trains no step
        (first_step, first), (last_step, last) = steps[0], steps[-1]
        self.unit.update(first=first, last=last, first_step=first_step, last_step=last_step, end=time.time(),
                         value=value, **fields)
        return self.unit


# ---- the plain loop and the P3 distillation: run in their own process (--worker) ----

def distill_parts(spec, model_dir, encoder, datas, teachers, world: int):
    """The distillation stage's student, loss and evaluation (stages/distill.py, without Ray);
    with ``teachers`` None, random ones of the right shapes (P3 measures memory, not quality)."""
    import torch

    from orchestrator.method import models
    from orchestrator.method.distill import Teacher, distill_step_loss, init_student, label_slices, teacher_overrides
    from orchestrator.method.train import batch_stream, evaluate

    stage, task_type, l = spec.distill, spec.model.task_type, spec.prompt.num_virtual_tokens
    slices = label_slices(datas) if task_type == "SEQ_CLS" else [None] * len(datas)
    base = models.load_base_model(model_dir, task_type, slices[-1].stop if slices[-1] else None, spec.seed)
    student = models.multitask_model(base, task_type, l, len(datas), stage.rank)
    if teachers is None:
        dim = student.prompt_encoder[models.ADAPTER].embedding.weight.shape[1]
        head = models.head_module(student)
        teachers = [Teacher(d.name, torch.randn(l, dim), torch.randn(d.num_labels, head.in_features) if head else None,
                            torch.randn(d.num_labels) if head else None) for d in datas]
    init_student(student, teachers, slices)
    overrides = [teacher_overrides(student, t, sl) for t, sl in zip(teachers, slices)]
    streams = [[batch_stream(d.train, stage.batch_size, spec.seed + k, r, world) for r in range(world)]
               for k, d in enumerate(datas)]

    def loss_fn(step: int):
        k = (step - 1) % len(datas)
        return rank_mean(lambda r: distill_step_loss(
            student, encoder(next(streams[k][r]), datas[k].label_words, task_id=k,
                             label_offset=slices[k].start if slices[k] else 0),
            overrides[k], task_type=task_type, num_virtual_tokens=l, label_slice=slices[k],
            lambda_=stage.lambda_, temperature=stage.temperature)[0], world)

    def evaluate_all() -> dict[str, float]:
        values = [next(iter(evaluate(student, d, "validation", encoder, task_id=k, label_slice=slices[k]).values()))
                  for k, d in enumerate(datas)]
        return {"eval_mean": sum(values) / len(values)}

    return student, slices, loss_fn, evaluate_all


def plain_loop(spec, trials: list[dict], scope: str, saved: Path, matched: bool) -> dict:
    """The spec's work in this process, trained models saved under ``saved``; ``scope`` stops after the
    sources ("sources") or after the MPT trials ("mpt") when the parts asked for need no more.
    ``matched``: each stage at the torch threads a Ray worker of its CPUs gets (P2); otherwise torch's
    default, every CPU, as a plain script runs (P1)."""
    import dataclasses

    import torch

    from orchestrator.data import few_shot, load_task
    from orchestrator.method import models
    from orchestrator.method.distill import SharedPrompt, Teacher, student_head_tensors, student_tensors
    from orchestrator.method.metrics import compute_metric
    from orchestrator.method.targets import build_target_model, load_trial_model, save_trial_model, task_id_of
    from orchestrator.method.train import Encoder, batch_stream, evaluate, fit, predict, task_loss

    result = {"threads_default": torch.get_num_threads(), "units": []}
    task_type, l = spec.model.task_type, spec.prompt.num_virtual_tokens
    model_dir = models.resolve_model_dir(spec.model)
    encoder = Encoder(models.load_tokenizer(model_dir), task_type, spec.model.max_length, spec.model.max_target_length)

    stage = spec.source
    threads = (lambda stage: torch.set_num_threads(threads_for(stage.resources))) if matched else (lambda stage: None)
    threads(stage)
    world, teachers = stage.resources.num_workers, {}
    for task in spec.sources:
        clock = Clock("source", task)
        data = load_task(spec.task(task), spec.seed)
        model = models.prompt_tuning_model(models.load_base_model(model_dir, task_type, data.num_labels, spec.seed),
                                           task_type, l)
        streams = [batch_stream(data.train, stage.batch_size, spec.seed, r, world) for r in range(world)]
        metrics = fit(model, lambda step: rank_mean(
                          lambda r: task_loss(model, encoder(next(streams[r]), data.label_words), task_type), world),
                      steps=stage.steps, lr=stage.lr, head_lr=stage.head_lr, weight_decay=stage.weight_decay,
                      eval_every=stage.eval_every, evaluate=lambda: evaluate(model, data, "validation", encoder),
                      on_step=clock.on_step, **stage.optimization())
        teachers[task] = Teacher.of(task, model)
        result["units"].append(clock.done(metrics[f"eval_{data.metric}"]))
    progress(f"plain loop: {len(spec.sources)} sources done")
    if scope == "sources":
        return result

    stage = spec.distill
    threads(stage)
    clock = Clock("distill", "+".join(spec.sources))
    datas = [load_task(spec.task(t), spec.seed) for t in spec.sources]
    student, slices, loss_fn, evaluate_all = distill_parts(spec, model_dir, encoder, datas,
                                                           [teachers[t] for t in spec.sources],
                                                           stage.resources.num_workers)
    metrics = fit(student, loss_fn, steps=stage.steps, lr=stage.lr, head_lr=stage.head_lr,
                  weight_decay=stage.weight_decay, eval_every=stage.eval_every, evaluate=evaluate_all,
                  on_step=clock.on_step, **stage.optimization())
    shared = SharedPrompt(student_tensors(student), student_head_tensors(student, spec.sources, slices))
    result["units"].append(clock.done(metrics["eval_mean"]))
    progress("plain loop: distillation done")

    stage = spec.target
    threads(stage)
    for task in spec.targets:
        for i, s in enumerate(t for t in trials if scope == "full" or t["method"] == "mpt"):
            method, seed, task_id = s["method"], int(s["seed"]), task_id_of(s["method"])
            clock = Clock("target", task, method=method, config=SearchSpace.configuration(s), seed=seed,
                          shots=str(s["shots"]))
            data = load_task(spec.task(task), spec.seed)  # each trial loads its data, as target_trial does
            data = dataclasses.replace(data, train=few_shot(data, s["shots"], seed))
            with tempfile.TemporaryDirectory() as workdir:
                model = build_target_model(method, int(s.get("rank", 1)), model_dir, task_type, l, data.num_labels,
                                           seed, shared, teachers, Path(workdir))
            stream = batch_stream(data.train, int(s["batch_size"]), seed)
            metrics = fit(model, lambda step: task_loss(model, encoder(next(stream), data.label_words, task_id),
                                                        task_type),
                          steps=stage.steps, lr=float(s.get("lr", stage.lr)), head_lr=float(s["head_lr"]),
                          weight_decay=float(s["weight_decay"]), eval_every=stage.eval_every,
                          evaluate=lambda: evaluate(model, data, "validation", encoder, task_id),
                          on_step=clock.on_step, **stage.optimization())
            # saved once at the end for the reload: the orchestrator's save at every eval is Tune's checkpoint
            (saved / f"{task}-{i}").mkdir()
            save_trial_model(model, method, saved / f"{task}-{i}")
            result["units"].append(clock.done(metrics[f"eval_{data.metric}"], saved=str(saved / f"{task}-{i}")))
        progress(f"plain loop: target {task} trials done")
    if scope == "mpt":
        return result

    trained = [u for u in result["units"] if u["stage"] == "target"]
    def family(u: dict) -> tuple:  # as select_best groups: target, method family, budget
        return u["task"], u["method"].split(":")[0], u["shots"]

    for _, units in best_configurations(trained, family).values():
        for u in units:
            clock = Clock("reload", u["task"], method=u["method"], config=u["config"], seed=u["seed"], shots=u["shots"])
            data = load_task(spec.task(u["task"]), spec.seed)
            model = load_trial_model(u["method"], model_dir, task_type, data.num_labels, spec.seed, u["saved"])
            predictions = predict(model, data.test, encoder, data.label_words, task_id_of(u["method"]))
            evaluate(model, data, "validation", encoder, task_id_of(u["method"]))
            result["units"].append(clock.done(None, test=compute_metric(data.metric, predictions,
                                                                        [ex.label for ex in data.test])))
    progress("plain loop: chosen trials reloaded and scored")
    return result


def distill_memory(spec, k: int, steps: int) -> dict:
    """P3: the distillation loop over ``k`` source tasks (the spec's sources repeated) for ``steps`` steps."""
    import torch

    from orchestrator.data import load_task
    from orchestrator.method import models
    from orchestrator.method.train import Encoder, fit

    stage = spec.distill
    torch.set_num_threads(threads_for(stage.resources))
    model_dir = models.resolve_model_dir(spec.model)
    encoder = Encoder(models.load_tokenizer(model_dir), spec.model.task_type, spec.model.max_length,
                      spec.model.max_target_length)
    datas = [load_task(spec.task(spec.sources[i % len(spec.sources)]), spec.seed) for i in range(k)]
    student, _, loss_fn, _ = distill_parts(spec, model_dir, encoder, datas, None, 1)
    before = proc_status_mib("VmRSS")
    fit(student, loss_fn, steps=steps, lr=stage.lr, head_lr=stage.head_lr, weight_decay=stage.weight_decay,
        eval_every=steps, evaluate=lambda: {}, **stage.optimization())  # training's memory: no eval
    return {"k": k, "before": before, "peak": proc_status_mib("VmHWM")}


# ---- the benchmark: subprocesses, MLflow, tables ----

def child_env() -> dict:
    """The subprocesses import the orchestrator this file sits beside."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def full_grid(spec) -> list[dict]:
    """Every trial Tune runs for one target: each sweep's param space (SearchSpace.tune_space, which
    draws the random domains as the target stage does) expanded by Tune's own variant generator."""
    from ray.tune.search.variant_generator import generate_variants

    t, trials = spec.target, []
    for shots in t.budgets():
        for methods in (["mpt"], t.baseline_methods(spec.sources)):
            if methods:
                space = t.search_space.tune_space(methods, t.defaults(), spec.seed_list(), shots, t.num_samples,
                                                  spec.seed)
                trials += [SearchSpace.trial_settings(config) for _, config in generate_variants(space)]
    return trials


def worker(args, sets: list[str], workdir: Path, *extra: str) -> tuple[float, float, dict]:
    """This script as a fresh process; (start, end, its JSON result)."""
    out = workdir / f"worker-{time.time_ns()}.json"
    command = [sys.executable, __file__, "--spec", args.spec, *[f"--set={s}" for s in sets], "--result", str(out),
               *extra]
    started = time.time()
    subprocess.run(command, env=child_env(), check=True)
    return started, time.time(), json.loads(out.read_text())


def run_orchestrator(spec_path: str, sets: list[str], workdir: Path) -> tuple[float, float, str]:
    workdir.mkdir(parents=True)
    uri = f"sqlite:///{workdir.resolve()}/mlflow.db"
    command = [sys.executable, "-m", "orchestrator", "run", str(Path(spec_path).resolve()), "--no-cache",
               "--tracking-uri", uri, *[f"--set={s}" for s in sets]]
    progress(f"orchestrator run in {workdir} (log: {workdir / 'orchestrator.log'})")
    started = time.time()
    with open(workdir / "orchestrator.log", "w") as log:
        code = subprocess.run(command, cwd=workdir, env=child_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    ended = time.time()
    if code != 0:
        sys.exit(f"orchestrator run failed (exit {code}; --out DIR keeps its files); its log's last lines:\n"
                 + "\n".join((workdir / "orchestrator.log").read_text().splitlines()[-30:]))
    progress(f"orchestrator run done in {ended - started:.1f} s")
    return started, ended, uri


def read_orchestrator(uri: str, spec) -> tuple[list[dict], float]:
    """The pipeline's child runs as units (the plain loop's shape) and the parent run's end time."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking import PARENT_TAG, PIPELINE_TAG, STAGE_TAG, STOPPED_TAG, TASK_TAG

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(spec.experiment_name()).experiment_id], max_results=50000)
    # children carry mpt.pipeline_run too: the parent is the one without a parent
    (parent,) = [r for r in runs if PIPELINE_TAG in r.data.tags and PARENT_TAG not in r.data.tags]
    units = []
    for run in runs:
        tags = run.data.tags
        if tags.get(PARENT_TAG) != parent.info.run_id:
            continue
        stage, task = tags[STAGE_TAG], tags[TASK_TAG]
        history = sorted(client.get_metric_history(run.info.run_id, "train_loss"), key=lambda m: m.step)
        if not history:
            progress(f"run {run.info.run_name} ({run.info.status}) logged no training step: left out")
            continue
        metric = "eval_mean" if stage == "distill" else f"eval_{spec.task(task).metric}"
        units.append({"stage": stage, "task": task, "method": tags.get("mpt.method"), "config": tags.get("mpt.config"),
                      "seed": int(run.data.params["seed"]) if "seed" in run.data.params else None,
                      "shots": run.data.params.get("shots"),
                      "start": run.info.start_time / 1000, "end": run.info.end_time / 1000,
                      "first": history[0].timestamp / 1000, "last": history[-1].timestamp / 1000,
                      "first_step": history[0].step, "last_step": history[-1].step,
                      "value": run.data.metrics.get(metric), "stopped": STOPPED_TAG in tags,
                      "test": next((v for k, v in run.data.metrics.items() if k.startswith("test_")), None)})
    return units, parent.info.end_time / 1000


def phases(units: list[dict], started: float, run_end: float, exited: float) -> dict[str, float]:
    """Seconds per phase, the same for both runs: a unit's start to its first step ("setup"), first
    step to end ("compute"), the gaps between stages, and what comes before and after."""
    by = defaultdict(list)
    for u in units:
        by[u["stage"]].append(u)
    out = {"start-up: process start -> first source starts": min(u["start"] for u in by["source"]) - started}
    for u in by["source"]:
        out[f"source {u['task']}: setup"] = u["first"] - u["start"]
        out[f"source {u['task']}: compute"] = u["end"] - u["first"]
    if by["distill"]:
        (d,) = by["distill"]
        out["gap: last source ends -> distill starts"] = d["start"] - max(u["end"] for u in by["source"])
        out["distill: setup"], out["distill: compute"] = d["first"] - d["start"], d["end"] - d["first"]
    targets = by["target"]
    mpt = [u for u in targets if u["method"] == "mpt"]
    if mpt and by["distill"]:
        out["gap: distill ends -> first MPT trial starts"] = min(u["start"] for u in mpt) - d["end"]
    if len(mpt) < len(targets):
        # the orchestrator starts the baselines when the sources end, beside the distillation
        out["gap: last source ends -> first baseline trial starts"] = (
            min(u["start"] for u in targets if u["method"] != "mpt") - max(u["end"] for u in by["source"]))
    for task in dict.fromkeys(u["task"] for u in targets):
        trials = [u for u in targets if u["task"] == task]
        out[f"target {task}, {len(trials)} trials: setup (sum)"] = sum(u["first"] - u["start"] for u in trials)
        out[f"target {task}, {len(trials)} trials: compute (sum)"] = sum(u["end"] - u["first"] for u in trials)
        out[f"target {task}: first trial starts -> last trial ends"] = (max(u["end"] for u in trials)
                                                                      - min(u["start"] for u in trials))
    if targets:
        out["tail: last trial ends -> run ends (reload and score, report)"] = run_end - max(u["end"] for u in targets)
    out["exit: run ends -> process exits"] = exited - run_end
    return out


def cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "" if value is None else str(value)


def table(headers: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|",
                      *["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]])


def steps_per_s(u: dict) -> float:
    return (u["last_step"] - u["first_step"]) / (u["last"] - u["first"])


def best_mpt(units: list[dict]) -> dict[tuple, tuple[float, str]]:
    """Per target and budget, the MPT configuration with the best validation mean over seeds."""
    mpt = [u for u in units if u["stage"] == "target" and u["method"] == "mpt" and u["value"] is not None]
    return {key: (score, same[0]["config"]) for key, (score, same) in
            best_configurations(mpt, lambda u: (u["task"], u["shots"])).items()}


def print_p4(spec, plain: list[dict], orch: list[dict], note: str) -> None:
    print(f"\n## P4: ASHA against the full grid ({spec.target.scheduler.type}{note})\n")
    rows, plain_best, orch_best = [], best_mpt(plain), best_mpt(orch)
    for key in sorted(orch_best):
        mpt = [u for u in orch if u["stage"] == "target" and u["method"] == "mpt" and (u["task"], u["shots"]) == key]
        full = [u for u in plain if u["stage"] == "target" and u["method"] == "mpt" and (u["task"], u["shots"]) == key]
        rows.append([*key, len(mpt), sum(u["last_step"] for u in mpt), sum(u["stopped"] for u in mpt),
                     sum(u["last_step"] for u in full), *orch_best[key], *plain_best.get(key, (None, None))])
    print(table(["target", "shots", "MPT trials", "steps run (orchestrator)", "stopped early", "steps (full grid)",
                 "best validation (orchestrator)", "its configuration", "best validation (full grid)",
                 "its configuration"], rows))
    print("\nValidation: the configuration's mean over seeds of each trial's last eval (a stopped trial's last), "
          "as the pipeline chooses.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "pipelines" / "demo.yaml"))
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="spec override for the plain loop and the orchestrator (repeatable)")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts, e.g. P1,P3")
    parser.add_argument("--p4-set", action="append", default=[], metavar="KEY=VALUE",
                        help="overrides (on top of --set) of a second run for P4, e.g. an ASHA sweep over a wider grid")
    parser.add_argument("--p3-steps", type=int, default=10, help="distillation steps per K in P3")
    parser.add_argument("--out", help="keep the runs' files (MLflow stores, logs, ray_results) in this directory")
    parser.add_argument("--worker", choices=["plain", "distill-memory"], help=argparse.SUPPRESS)
    parser.add_argument("--scope", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--trials", help=argparse.SUPPRESS)
    parser.add_argument("--matched-threads", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--k", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    spec = load_spec(args.spec, args.sets)
    if args.worker == "plain":
        saved = Path(args.result).with_suffix("")
        saved.mkdir()
        result = plain_loop(spec, json.loads(Path(args.trials).read_text()), args.scope, saved, args.matched_threads)
    elif args.worker == "distill-memory":
        result = distill_memory(spec, args.k, args.p3_steps)
    if args.worker:
        Path(args.result).write_text(json.dumps(result))
        return
    parts = {p.strip().upper() for p in args.only.split(",")}
    if parts - set(PARTS):
        parser.error(f"--only takes {', '.join(PARTS)}")
    unsupported = [what for what, yes in (
        ("the joint_multitask baseline", "joint_multitask" in spec.target.baselines),
        ("seed_scope: pipeline over several seeds", spec.seed_scope == "pipeline" and len(spec.seed_list()) > 1),
        ("GPU workers", any(s.resources.use_gpu for s in (spec.source, spec.distill, spec.target)))) if yes]
    if unsupported and parts & {"P1", "P2", "P4"}:
        sys.exit(f"the plain loop does not implement {', '.join(unsupported)}; choose parts with --only P3"
                 + (", or add --set seed_scope=targets (the demo's default is pipeline)" if "seed_scope" in
                    " ".join(unsupported) else ""))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        benchmark(args, spec, parts, Path(args.out).resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="overhead-") as tmp:
            benchmark(args, spec, parts, Path(tmp))


def benchmark(args, spec, parts: set[str], workdir: Path) -> None:
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    print(f"# Orchestrator overhead: {args.spec}{''.join(f' --set {s}' for s in args.sets)}\n\n"
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}, commit {commit}, {os.cpu_count()} CPUs"
          f"{f', files in {workdir}' if args.out else ''}")
    p4_main = "P4" in parts and not args.p4_set and spec.target.scheduler.type == "asha"
    if parts & {"P1", "P2"} or p4_main:
        (workdir / "trials.json").write_text(json.dumps(full_grid(spec)))
    if "P1" in parts or p4_main:
        scope = "full" if "P1" in parts else "mpt"
        progress(f"plain loop ({scope}, torch's default threads)")
        p_start, p_end, plain = worker(args, args.sets, workdir, "--worker", "plain", "--scope", scope,
                                       "--trials", str(workdir / "trials.json"))
        progress(f"plain loop done in {p_end - p_start:.1f} s")
        o_start, o_end, uri = run_orchestrator(args.spec, args.sets, workdir / "orchestrator")
        orch, parent_end = read_orchestrator(uri, spec)
    if "P2" in parts:
        def matched_sources(sets: list[str], threads: str) -> dict:
            progress(f"P2: plain loop (sources, at the threads of {threads})")
            return worker(args, sets, workdir, "--worker", "plain", "--scope", "sources",
                          "--trials", str(workdir / "trials.json"), "--matched-threads")[2]

        p2 = {}
        if "P1" in parts:
            p2["as the spec runs them"] = (matched_sources(args.sets, "each source's Ray worker"), orch,
                                          spec.source.resources)
        alone_sets = [*args.sets, *P2_ALONE]
        alone_spec = load_spec(args.spec, alone_sets)
        matched = matched_sources(alone_sets, "a worker holding every CPU")
        p2_orch, _ = read_orchestrator(run_orchestrator(args.spec, alone_sets, workdir / "orchestrator-p2")[2],
                                       alone_spec)
        p2["one source job at a time, holding every CPU"] = (matched, p2_orch, alone_spec.source.resources)

    if "P1" in parts:
        print("\n## P1: the same work, plain loop against orchestrator\n")
        print(table(["run", "wall (s)"], [["plain loop: one process, no Ray, no MLflow", p_end - p_start],
                                          ["orchestrator: `python -m orchestrator run --no-cache`", o_end - o_start],
                                          ["ratio orchestrator / plain", (o_end - o_start) / (p_end - p_start)]]))
        plain_phases = phases(plain["units"], p_start, max(u["end"] for u in plain["units"]), p_end)
        orch_phases = phases(orch, o_start, parent_end, o_end)
        print("\n" + table(["phase", "plain (s)", "orchestrator (s)"],
                           [[k, plain_phases.get(k), v] for k, v in orch_phases.items()]))
        print("\nsetup: a stage's start (plain: its code; orchestrator: its MLflow run) to its first training step; "
              "compute: first step to its end (evals, and in the orchestrator checkpoints and logging, included). "
              "The orchestrator runs sources and trials concurrently, so its sums exceed their wall time; the plain "
              "loop runs DDP ranks one after the other. Plain tail: the chosen trials reloaded and scored.")
        chosen = {(o["task"], o["config"], o["seed"]): o["test"] for o in orch if o["test"] is not None}
        print("\nThe same work? Each method's chosen trial, its test metric after the reload:\n")
        print(table(["target", "method", "configuration", "seed", "plain", "orchestrator"],
                    [[u["task"], u["method"], u["config"], u["seed"], u["test"],
                      chosen.get((u["task"], u["config"], u["seed"]), "not chosen")]
                     for u in plain["units"] if u["stage"] == "reload"]))

    if "P2" in parts:
        print("\n## P2: source training steps per second, orchestrator against the plain loop at the same threads")
        for how, (matched, orch_units, res) in p2.items():
            threads = threads_for(res)
            print(f"\n{how[0].upper()}{how[1:]} ({res.cpus_per_worker:g} CPU per job, {threads} torch thread(s) in both):\n")
            rows = []
            for u in (u for u in matched["units"] if u["stage"] == "source"):
                o = next(o for o in orch_units if o["stage"] == "source" and o["task"] == u["task"])
                at_once = sum(p["first"] < o["last"] and o["first"] < p["last"]
                              for p in orch_units if p["stage"] == "source")
                rows.append([u["task"], steps_per_s(u), steps_per_s(o), steps_per_s(o) / steps_per_s(u), at_once,
                             u["value"], o["value"]])
            print(table(["source", "plain steps/s", "orchestrator steps/s", "orchestrator / plain",
                         "source jobs training at once (orchestrator)", "final validation plain",
                         "final validation orchestrator"], rows))
        print(f"\nsteps/s: (last step - first step) / (time of last - first train_loss), the eval passes between "
              f"included in both (and the orchestrator's checkpoint reports). Threads: Ray gives a worker of c CPUs "
              f"OMP_NUM_THREADS=max(1, floor(c)); the plain loop sets torch.set_num_threads to the same. One job at a "
              f"time: a second orchestrator run with --set {' --set '.join(P2_ALONE)} (the targets kept short: P2 "
              f"reads the sources); the other jobs' processes still start beside the first one.")

    if "P3" in parts:
        print(f"\n## P3: distillation peak memory ({args.p3_steps} steps, one worker process)\n")
        rows = []
        for k in (2, 4, 8):
            progress(f"P3: distillation at K={k}")
            rows.append(worker(args, args.sets, workdir, "--worker", "distill-memory", "--k", str(k),
                               "--p3-steps", str(args.p3_steps))[2])
        print(table(["K source prompts", "RSS before training (MiB)", "peak RSS (MiB)"],
                    [[r["k"], r["before"], r["peak"]] for r in rows]))
        print(f"\nPeak K=8 / K=2: {rows[2]['peak'] / rows[0]['peak']:.2f}; above the RSS before training: "
              f"{(rows[2]['peak'] - rows[2]['before']) / (rows[0]['peak'] - rows[0]['before']):.2f}. The spec's "
              f"sources repeated to K, random teacher prompts and heads; peak: VmHWM.")

    if "P4" in parts:
        if args.p4_set:
            p4_spec = load_spec(args.spec, args.sets + args.p4_set)
            (workdir / "trials-p4.json").write_text(json.dumps(full_grid(p4_spec)))
            progress("P4: plain loop over the full MPT grid")
            *_, p4_plain = worker(args, args.sets + args.p4_set, workdir, "--worker", "plain", "--scope", "mpt",
                                  "--trials", str(workdir / "trials-p4.json"))
            p4_orch, _ = read_orchestrator(run_orchestrator(args.spec, args.sets + args.p4_set,
                                                            workdir / "orchestrator-p4")[2], p4_spec)
            print_p4(p4_spec, p4_plain["units"], p4_orch, "; --p4-set " + " ".join(args.p4_set))
        elif p4_main:
            print_p4(spec, plain["units"], orch, "")
        else:
            print("\n## P4: does not apply\n\nThe spec's scheduler is FIFO: every trial runs to the end, as in the "
                  "full grid. Give --p4-set overrides for an ASHA run, e.g. --p4-set target.scheduler.type=asha "
                  "--p4-set 'target.search_space.lr={grid: [0.03, 0.1, 0.3]}'.")


if __name__ == "__main__":
    main()
