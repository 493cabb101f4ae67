"""SageMaker's ModelExplainability monitor (Clarify's feature attribution drift), as a library.

- :mod:`.attributions`: Clarify's analysis configuration (:func:`~.attributions.load_shap_config`:
  ``methods.shap`` with its ``baseline`` rows, ``num_samples``, ``agg_method``, ``use_logit``, and
  ``headers`` less ``label`` as the feature names) -> SHAP values of rows against the baseline
  (:func:`~.attributions.global_shap`, :func:`~.attributions.compute_attributions`) -> Clarify's
  ``analysis.json`` (:func:`~.attributions.explainability_analysis`). The model is not imported:
  Kernel SHAP calls ``predict(rows) -> one number a row`` (the endpoint, over the container
  contract); a fitted scikit-learn tree ensemble or linear model handed as ``model=`` gives the same
  values exactly and much faster (TreeSHAP, the linear explainer). Needs the ``explain`` extra
  (``shap``) to compute values; reading configurations and writing files do not.
- :mod:`.drift`: two analyses -> the NDCG of the current ranking weighted by the baseline's
  attributions (:func:`~.drift.ndcg`, SageMaker's documented definition), SageMaker's violations
  below the threshold (:func:`~.drift.check_attribution_drift`, 0.90 by default) and the values it
  publishes (:func:`~.drift.metric_values`: ``feature_<name>``, ``expected_value``).
- :mod:`.execution`: one scheduled execution over an endpoint's captured inputs.

Like its siblings it imports only ``monitor/common``.
"""
