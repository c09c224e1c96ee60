"""P1: the same work as a plain loop and as an orchestrator run: both wall times, each phase of
both (setup and compute of every stage, the gaps between them), and whether each method's chosen
trial scores the same test metric after the reload. The runs themselves start in ``__main__`` (P4
reads them too)."""

from __future__ import annotations

from collections import defaultdict

from .common import table


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


def report(plain: dict, orch: list[dict], p_start: float, p_end: float, o_start: float, o_end: float,
           parent_end: float) -> None:
    """P1's tables: ``plain`` the plain loop's result, ``orch`` the orchestrator's units; the start and
    end of both processes and the end of the orchestrator's parent run."""
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
