"""Which optimisation recipe to use for the demo's prompt tuning: a measurement, not a test.

Trains vanilla prompt tuning (what the source stage does) of the packaged MiniLM on two of the
demo's source tasks, with the demo's source settings, under each recipe and seed, and prints the
mean validation metric per recipe. One thread, no Ray, no MLflow:

    PYTHONPATH=. python bench/recipe.py [--tasks sentiment,paraphrase] [--seeds 0,1] [--steps N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from orchestrator.data import load_task
from orchestrator.method import models
from orchestrator.method.train import Encoder, autocast, batch_stream, evaluate, fit, task_loss
from orchestrator.spec.loading import load_spec

DEMO = Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml"
RECIPES = {  # name: fit's optimisation keywords (warmup_ratio as the spec's default)
    "adamw linear, dropout on": {"optimizer": "adamw", "schedule": "linear", "dropout": "on"},
    "adamw linear, dropout off": {"optimizer": "adamw", "schedule": "linear", "dropout": "off"},
    "adamw constant, dropout on": {"optimizer": "adamw", "schedule": "constant", "dropout": "on"},
    "adamw constant, dropout off": {"optimizer": "adamw", "schedule": "constant", "dropout": "off"},
    "adafactor constant, dropout off": {"optimizer": "adafactor", "schedule": "constant", "dropout": "off"},
}


def task_spec(spec, name: str):
    """The demo's task, or an embedded task it does not use, capped as the demo's first one is."""
    return next((t for t in spec.tasks if t.name == name), None) or spec.tasks[0].model_copy(update={"name": name})


def run(spec, task: str, seed: int, steps: int, recipe: dict) -> float:
    """One source-stage run (vanilla prompt tuning of one task); its final validation metric."""
    stage, data = spec.source, load_task(task_spec(spec, task), spec.seed)
    model_dir = models.resolve_model_dir(spec.model)
    encoder = Encoder(models.load_tokenizer(model_dir), spec.model.task_type, spec.model.max_length,
                      spec.model.max_target_length)
    model = models.prompt_tuning_model(models.load_base_model(model_dir, spec.model.task_type, data.num_labels, seed),
                                       spec.model.task_type, spec.prompt.num_virtual_tokens)
    stream = batch_stream(data.train, stage.batch_size, seed)
    device = torch.device("cpu")

    def loss_fn(step: int) -> torch.Tensor:
        with autocast(device):
            return task_loss(model, encoder(next(stream), data.label_words), spec.model.task_type)

    metrics = fit(model, loss_fn, steps=steps, lr=stage.lr, head_lr=stage.head_lr, weight_decay=stage.weight_decay,
                  eval_every=steps, evaluate=lambda: evaluate(model, data, "validation", encoder),
                  warmup_ratio=stage.warmup_ratio, **recipe)
    value = metrics[f"eval_{data.metric}"]
    print(f"{task} seed {seed} {recipe}: {value:.3f}", file=sys.stderr, flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sentiment,paraphrase", help="comma-separated embedded tasks")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (head init and batch order)")
    parser.add_argument("--steps", type=int, default=None, help="default: the demo's source steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(DEMO)
    tasks, seeds = args.tasks.split(","), [int(s) for s in args.seeds.split(",")]
    steps = args.steps or spec.source.steps
    started = time.time()
    results = {name: {t: [run(spec, t, s, steps, recipe) for s in seeds] for t in tasks}
               for name, recipe in RECIPES.items()}
    st = spec.source
    print(f"Validation {', '.join(sorted({task_spec(spec, t).metric for t in tasks}))}, mean of seeds {seeds}: packaged "
          f"MiniLM, {spec.prompt.num_virtual_tokens} virtual tokens, {steps} steps"
          f"{'' if steps == st.steps else f' (the demo uses {st.steps})'}, batch {st.batch_size}, lr {st.lr}, "
          f"head_lr {st.head_lr}, warmup_ratio {st.warmup_ratio}, "
          f"{task_spec(spec, tasks[0]).max_train_examples} train examples ({time.time() - started:.0f} s in all)")
    width, columns = max(map(len, RECIPES)), [max(7, len(t)) for t in tasks]
    print(f"| {'recipe':<{width}} | " + " | ".join(f"{t:>{c}}" for t, c in zip(tasks, columns)) + " |    mean |")
    print(f"|{'-' * (width + 2)}|" + "|".join("-" * (c + 2) for c in columns) + "|---------|")
    for name, by_task in results.items():
        means = [statistics.mean(v) for v in by_task.values()]
        print(f"| {name:<{width}} | " + " | ".join(f"{m:{c}.3f}" for m, c in zip(means, columns))
              + f" | {statistics.mean(means):7.3f} |")


if __name__ == "__main__":
    main()
