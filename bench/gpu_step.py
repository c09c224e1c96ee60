"""P2 on a GPU: a source job's training step against a plain PEFT loop, and the model FLOP
utilisation of that step, in bf16: a measurement, not a test.

Both loops train the same prompt-tuning model on the same batches in one process:
- "source job" is what a source job's Ray Train worker runs (``stages/source.source_train_loop``,
  without Ray around it): ``fit`` with the source loss (encode the batch, move it to the device, bf16
  autocast, the task loss), the spec's optimizer, schedule and dropout, gradient clipping and the
  per-step loss that the run logs;
- "plain loop" is the loop a user writes from PEFT's prompt-tuning example: encode, forward under
  autocast, backward, optimizer step, and no read of the loss between steps;
- "plain loop + loss.item()" is the plain loop reading its loss every step, to show what that costs.
The variants alternate, ``--repeats`` times each, after ``--warmup`` steps; the median is reported.

The model is built from a config (no hub): by default one of T5-Base's size and shape (12+12 layers,
width 768, 32128-token vocabulary) with the packaged tokenizer, saved and loaded through
``from_pretrained``, with the prompt length, batch size, input length and optimisation of the source
stage of ``--spec`` (default pipelines/glue_t5_base.yaml: the paper's setting). Inputs are the
embedded ``nli`` task's examples as they are (short, padded to the longest in the batch), and the
same examples joined into inputs that fill ``max_length`` (the "full" rows), at the spec's batch size
and at ``--big-batch``.

MFU: the FLOPs of one training step (forward and backward; the frozen weights get no gradient)
counted by torch's FlopCounterMode on every timed batch, divided by the step time, against the GPU's
dense bf16 peak (``--peak-tflops``, default 989: the H100/H200 SXM data sheet) and against a
8192x8192x8192 bf16 matmul measured in the same run. ``--model tiny`` runs the tiny test model on
any device, to check the script:

    PYTHONPATH=. python bench/gpu_step.py [--spec pipelines/glue_t5_base.yaml] [--model t5-base|tiny]
        [--steps 40] [--warmup 10] [--repeats 2] [--big-batch 128] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from orchestrator.data import Example, load_task
from orchestrator.method import models
from orchestrator.method.optimization import make_optimizer, set_dropout
from orchestrator.method.train import Encoder, autocast, batch_stream, fit, task_loss, to_device
from orchestrator.spec.schema import ModelSpec, TaskSpec
from orchestrator.spec.loading import load_spec

REPO = Path(__file__).resolve().parents[1]
TASK = "nli"


def progress(message: str) -> None:
    print(f"[gpu_step] {message}", file=sys.stderr, flush=True)


def t5_base_sized(out: Path) -> str:
    """A randomly initialised model of T5-Base's configuration (google-t5/t5-base's config.json),
    saved with the packaged tokenizer, whose ids all lie inside T5's vocabulary."""
    transformers = models.quiet_transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(models.packaged_model_dir())
    config = transformers.T5Config(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12,
                                   num_decoder_layers=12, num_heads=12, feed_forward_proj="relu",
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                                   decoder_start_token_id=tokenizer.pad_token_id)
    transformers.T5ForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def full_length(examples: list[Example], words: int) -> list[Example]:
    """The examples joined, each with the texts of the ones after it, into inputs of ``words`` words
    or more (truncated by the encoder at max_length); each keeps its own label."""
    pool = [" ".join(ex.texts) for ex in examples]
    out = []
    for i, ex in enumerate(examples):
        text, count, j = [], 0, i
        while count < words:
            text.append(pool[j % len(pool)])
            count += len(text[-1].split())
            j += 1
        out.append(Example((" ".join(text),), ex.label))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_loss(model, chunk, encoder, label_words, device) -> torch.Tensor:
    """One batch's loss as a source job computes it: encoded, moved to the device, under autocast."""
    batch = to_device(encoder(chunk, label_words), device)
    with autocast(device):
        return task_loss(model, batch, encoder.task_type)


def source_job(model, chunks, encoder, label_words, stage, device, warmup: int, fit=fit) -> float:
    """Steps per second of ``fit`` with the source stage's loss, after ``warmup`` steps."""
    it, start = iter(chunks), []

    def loss_fn(step: int) -> torch.Tensor:
        if step == warmup + 1:
            sync(device)
            start.append(time.perf_counter())
        return step_loss(model, next(it), encoder, label_words, device)

    fit(model, loss_fn, steps=len(chunks), lr=stage.lr, head_lr=stage.head_lr, weight_decay=stage.weight_decay,
        eval_every=len(chunks), evaluate=dict, **stage.optimization())
    sync(device)
    return (len(chunks) - warmup) / (time.perf_counter() - start[0])


def plain_loop(model, chunks, encoder, label_words, stage, device, warmup: int, read_loss: bool = False) -> float:
    """Steps per second of PEFT's example loop on the same batches, after ``warmup`` steps."""
    set_dropout(model, stage.dropout)
    model.train()
    opt = make_optimizer([{"params": [p for p in model.parameters() if p.requires_grad], "lr": stage.lr}],
                         stage.optimizer, stage.weight_decay)
    for i, chunk in enumerate(chunks):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        loss = step_loss(model, chunk, encoder, label_words, device)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if read_loss:
            loss.item()
    sync(device)
    return (len(chunks) - warmup) / (time.perf_counter() - start)


VARIANTS = {"source job": source_job, "plain loop": plain_loop,
            "plain loop + loss.item()": functools.partial(plain_loop, read_loss=True)}


def step_flops(model, chunks, encoder, label_words, device) -> float:
    """Mean FLOPs of one training step (forward and backward) over ``chunks``."""
    total = 0
    for chunk in chunks:
        with FlopCounterMode(display=False) as counter:
            step_loss(model, chunk, encoder, label_words, device).backward()
        model.zero_grad(set_to_none=True)
        total += counter.get_total_flops()
    return total / len(chunks)


def kernel_ms(model, chunks, encoder, label_words, stage, device) -> float | None:
    """GPU kernel time per step of the plain loop, from torch's profiler: set against the step time,
    what the GPU works and what it waits for the CPU."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        plain_loop(model, chunks, encoder, label_words, stage, device, warmup=0)
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1e3 / len(chunks)


def matmul_tflops(device: torch.device) -> float | None:
    """A large bf16 matmul's rate on this GPU: what its tensor cores deliver here."""
    if device.type != "cuda":
        return None
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(device)
    return 10 * 2 * 8192 ** 3 / (time.perf_counter() - start) / 1e12


def measure(case: str, examples, batch_size: int, spec, model_dir: str, encoder, label_words, device, args) -> dict:
    stage, l = spec.source, spec.prompt.num_virtual_tokens
    stream = batch_stream(examples, batch_size, spec.seed)
    chunks = [next(stream) for _ in range(args.warmup + args.steps)]

    def fresh():
        base = models.load_base_model(model_dir, spec.model.task_type, None, spec.seed)
        return models.prompt_tuning_model(base, spec.model.task_type, l).to(device)

    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, run in VARIANTS.items():
            model = fresh()
            rates[name].append(run(model, chunks, encoder, label_words, stage, device, args.warmup))
            del model
    model = fresh()
    flops = step_flops(model, chunks[args.warmup:], encoder, label_words, device)
    kernels = kernel_ms(model, chunks[args.warmup:args.warmup + 10], encoder, label_words, stage, device)
    start = time.perf_counter()
    encoded = [encoder(c, label_words) for c in chunks]
    encode_ms = (time.perf_counter() - start) / len(chunks) * 1e3
    tokens = statistics.mean(int(e["attention_mask"].sum()) for e in encoded[args.warmup:])
    row = {"case": case, "batch": batch_size, "input_tokens_per_step": tokens, "virtual_tokens": l,
           "gflop_per_step": flops / 1e9, "kernel_ms": kernels, "encode_ms": encode_ms,
           **{f"{name} steps/s": statistics.median(v) for name, v in rates.items()},
           "runs": rates}
    progress(f"{case}, batch {batch_size}: " + ", ".join(f"{n} {statistics.median(v):.2f}" for n, v in rates.items()))
    return row


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(REPO / "pipelines" / "glue_t5_base.yaml"))
    parser.add_argument("--model", choices=("t5-base", "tiny"), default="t5-base")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternating")
    parser.add_argument("--big-batch", type=int, default=128, help="the second batch size of the full-length rows")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (data sheet)")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    spec = load_spec(args.spec)
    if spec.model.task_type != "SEQ_2_SEQ_LM":
        parser.error(f"--spec {args.spec}: model.task_type is {spec.model.task_type}; this benchmark builds a "
                     "T5 model, so give a SEQ_2_SEQ_LM spec")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    progress(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = (t5_base_sized(Path(tmp) / "t5-base-sized") if args.model == "t5-base"
                     else models.resolve_model_dir(ModelSpec(name_or_path="tiny:t5"), Path(tmp)))
        encoder = Encoder(models.load_tokenizer(model_dir), "SEQ_2_SEQ_LM", spec.model.max_length,
                          spec.model.max_target_length)
        data = load_task(TaskSpec(name=TASK, kind="embedded"), spec.seed)
        full = full_length(data.train, spec.model.max_length)
        cases = [("as embedded", data.train, spec.source.batch_size), ("full length", full, spec.source.batch_size),
                 ("full length", full, args.big_batch)]
        rows = [measure(case, examples, batch, spec, model_dir, encoder, data.label_words, device, args)
                for case, examples, batch in cases]
    matmul = matmul_tflops(device)
    print(f"\n{torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}; "
          f"{args.model} model, {spec.prompt.num_virtual_tokens} virtual tokens, {spec.source.optimizer}, "
          f"bf16 autocast on CUDA; {args.steps} timed steps after {args.warmup}, median of {args.repeats}"
          + (f"; 8192^3 bf16 matmul {matmul:.0f} TFLOP/s" if matmul else ""))
    others = [name for name in VARIANTS if name != "plain loop"]
    print("| inputs | batch | tokens/step | plain loop ms/step | "
          + " | ".join(f"{n}: ms/step, speed vs plain" for n in others)
          + " | GFLOP/step | source job TFLOP/s | MFU (peak) | of matmul | GPU kernel ms/step | encode ms |")
    print("|---" * (10 + len(others)) + "|")
    for r in rows:
        plain, job = r["plain loop steps/s"], r["source job steps/s"]
        tflops = r["gflop_per_step"] * job / 1e3
        r.update(ratio=job / plain, tflops=tflops, mfu=tflops / args.peak_tflops,
                 of_matmul=tflops / matmul if matmul else None)
        cells = [f"{1e3 / r[f'{n} steps/s']:.1f}, {r[f'{n} steps/s'] / plain:.2f}x" for n in others]
        print(f"| {r['case']} | {r['batch']} | {r['input_tokens_per_step']:.0f} | {1e3 / plain:.1f} | "
              + " | ".join(cells) + f" | {r['gflop_per_step']:.0f} | {tflops:.1f} | {tflops / args.peak_tflops:.1%} "
              f"| {f'{tflops / matmul:.1%}' if matmul else '-'} | {cell(r['kernel_ms'])} | {r['encode_ms']:.1f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"matmul_tflops": matmul, "peak_tflops": args.peak_tflops,
                                              "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
