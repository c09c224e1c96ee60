"""Shipping a result: a chosen trial as an ``mlflow.pyfunc`` model (``pyfunc``), the MLflow model
registry (``registry``) and the ``predict`` verb's batch job (``predict``).
"""
