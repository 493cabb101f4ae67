"""Metrics: invocation and utilisation time series per endpoint/variant/instance, business metrics,
the Prometheus exposition, and alarms (see service.py for how the parts run together).

Nothing is imported here, so that the CLI can use ``moorage.metrics.vocabulary`` without loading numpy,
SQLAlchemy and the sketches.
"""
