"""P4: the steps an ASHA sweep ran against the full grid's, and the best MPT validation of each:
from P1's runs when the spec's own scheduler is ASHA, or from a second orchestrator run and plain
loop with ``--p4-set`` overrides (e.g. an ASHA sweep over a wider grid)."""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.results.selection import best_configurations
from orchestrator.spec.loading import load_spec

from .common import progress, table, worker
from .runs import full_grid, read_orchestrator, run_orchestrator


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


def report(args, spec, workdir: Path, p4_main: bool, plain: dict | None, orch: list[dict] | None) -> None:
    """P4's section: with ``--p4-set``, its own runs first; otherwise from P1's runs (``p4_main``:
    the spec's scheduler is ASHA, and ``plain``/``orch`` are the plain loop's result and the
    orchestrator's units)."""
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
