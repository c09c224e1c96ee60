"""P2: training steps per second of each source, orchestrator against the plain loop at the same
torch thread count: one source job at a time holding every CPU (a second, short orchestrator run),
and, with P1, as the spec runs them (several jobs sharing the CPUs)."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.spec.loading import load_spec

from .common import progress, table, threads_for, worker
from .runs import read_orchestrator, run_orchestrator

# P2's second run: each source job holds every CPU, so they train one after the other, as the plain loop does
P2_ALONE = [f"source.resources.cpus_per_worker={os.cpu_count()}", "seeds=[0]", "target.baselines=[]"]


def steps_per_s(u: dict) -> float:
    return (u["last_step"] - u["first_step"]) / (u["last"] - u["first"])


def measure(args, spec, workdir: Path, orch: list[dict] | None) -> dict:
    """P2's runs, by how the sources ran: (the plain loop's sources at matched threads, the
    orchestrator's units, the source resources). ``orch``: P1's orchestrator run when P1 ran, for
    the row "as the spec runs them"; the one-at-a-time row is a second orchestrator run."""

    def matched_sources(sets: list[str], threads: str) -> dict:
        progress(f"P2: plain loop (sources, at the threads of {threads})")
        return worker(args, sets, workdir, "--worker", "plain", "--scope", "sources",
                      "--trials", str(workdir / "trials.json"), "--matched-threads")[2]

    p2 = {}
    if orch is not None:
        p2["as the spec runs them"] = (matched_sources(args.sets, "each source's Ray worker"), orch,
                                      spec.source.resources)
    alone_sets = [*args.sets, *P2_ALONE]
    alone_spec = load_spec(args.spec, alone_sets)
    matched = matched_sources(alone_sets, "a worker holding every CPU")
    p2_orch, _ = read_orchestrator(run_orchestrator(args.spec, alone_sets, workdir / "orchestrator-p2")[2],
                                   alone_spec)
    p2["one source job at a time, holding every CPU"] = (matched, p2_orch, alone_spec.source.resources)
    return p2


def report(p2: dict) -> None:
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
