"""The spec layer, just above runtime: what a pipeline is asked to do, checked before anything runs.

``schema`` is the typed spec (pydantic, every field with its help), ``loading`` reads a YAML file and
``--set`` overrides into it, ``search`` is the target sweeps' search space and ``methods`` the table
of target methods every other layer reads.
"""
