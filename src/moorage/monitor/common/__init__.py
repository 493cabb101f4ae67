"""What every monitor type shares: SageMaker's monitoring files, datasets, captured traffic, type inference,
distributions read back from ``statistics.json``, a job's time window, and the report page.

Nothing here knows a monitor type: ``data_quality/`` and its future siblings import this package,
never the other way round.
"""
