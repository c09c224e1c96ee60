"""P3: peak memory of the distillation loop at K = 2, 4 and 8 source prompts (the spec's sources
repeated, random teachers), each K in its own worker process (``--worker distill-memory``)."""

from __future__ import annotations

from pathlib import Path

from .common import progress, table, threads_for, worker
from .plain import distill_parts


def proc_status_mib(key: str) -> float:
    line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key + ":"))
    return int(line.split()[1]) / 1024


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


def run_and_report(args, workdir: Path) -> None:
    """One worker per K, then P3's table."""
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
