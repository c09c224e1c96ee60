"""The method: MPT's models, the one training loop, the distillation and the metrics.

Plain PyTorch, transformers and peft: nothing here imports Ray or MLflow (a unit test holds it to
that), so every function runs in a plain process, and the orchestration in ``orchestrator.pipeline.stages``
only wraps it.
"""
