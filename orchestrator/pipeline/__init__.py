"""The pipeline: the Ray graph (``dag``) over the stages (``stages/``), the cache that lets a rerun
skip finished stages (``cache``), the pre-flight checks (``preflight``) and the resource arithmetic
both share (``resources``).
"""
