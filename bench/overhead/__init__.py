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
over a wider grid). Linux only (/proc), CPU only. Run from the checkout's root:

    python -m bench.overhead [--spec pipelines/demo.yaml] [--set KEY=VALUE ...]
        [--only P1,P2,P3,P4] [--p4-set KEY=VALUE ...] [--p3-steps 10] [--out DIR]

Markdown tables go to stdout, one progress line per phase to stderr. The orchestrator runs with the
temp dir as its working directory (ray_results lands there), so a spec's relative paths to local
task files do not resolve: use absolute ones.

The modules: ``__main__`` (the command line and the order of the runs), ``common`` (progress lines,
tables, this package as a worker process), ``plain`` (the plain loop), ``runs`` (the trial grid,
the orchestrator run and its runs read back from MLflow), then one per figure: ``p1`` (wall times
and phases), ``p2`` (source steps per second), ``p3`` (distillation memory), ``p4`` (ASHA against
the full grid).
"""
