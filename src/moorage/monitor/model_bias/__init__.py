"""SageMaker's ModelBias monitor: Clarify's bias metrics, computed and checked for drift as SageMaker does.

:mod:`.metrics` has the metrics themselves over boolean arrays (which rows are the sensitive facet,
which have a positive label, which a positive prediction); :mod:`.analysis` reads Clarify's analysis
configuration, computes ``analysis.json`` in Clarify's shape from a data set and the model's
predictions, checks an analysis against a baseline analysis (SageMaker's bias-drift violations) and
gives the values SageMaker publishes to CloudWatch. Files written by SageMaker Clarify load here and
ours load there.
"""
