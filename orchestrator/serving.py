"""Models saved before the package had subpackages name ``orchestrator.serving`` in their entry point
(MLflow's models from code); this keeps them loading. New models name ``orchestrator.serve.pyfunc``."""

from .serve.pyfunc import MptModel

__all__ = ["MptModel"]
