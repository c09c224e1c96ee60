"""What a run's results mean: the configuration chosen during a run (``selection``), the ``report``
verb's tables (``report``) built on the statistics (``stats``) and plots (``plots``), and the lookup
of finished pipeline runs (``runs``).
"""
