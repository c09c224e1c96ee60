"""The orchestration of each stage: the method (``orchestrator.method``) wired to Ray and MLflow.

One module per stage (``source``, ``distill``, ``target``), the Ray Train worker plumbing they share
(``worker``) and the context every Ray task, Train worker and Tune trial receives (``context``).
"""
