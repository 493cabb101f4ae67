"""SageMaker's ModelQuality monitor: predictions joined with ground-truth labels give the metrics of a problem type
(:mod:`.metrics`, SageMaker's ``statistics.json`` with its standard deviations), a baseline's metrics give
``constraints.json`` and later metrics are checked against it (:mod:`.constraints`, SageMaker's
``constraint_violations.json``), so baselines and reports travel between SageMaker and moorage unchanged.
"""
