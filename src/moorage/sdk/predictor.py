"""``Predictor``: invoke an endpoint with Python data, and manage the endpoint behind it."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from moorage.sdk.deserializers import BaseDeserializer, BytesDeserializer
from moorage.sdk.serializers import BaseSerializer, IdentitySerializer
from moorage.sdk.session import Session

__all__ = ["Predictor"]


class Predictor:
    """Real-time predictions from one endpoint, in the role of ``sagemaker.predictor.Predictor``.

    ``serializer`` turns the data given to ``predict`` into the request body (its CONTENT_TYPE is
    sent as Content-Type); ``deserializer`` turns the response into data (its ACCEPT is sent as
    Accept).
    """

    def __init__(self, endpoint_name: str, sagemaker_session: Session | None = None,
                 serializer: BaseSerializer | None = None, deserializer: BaseDeserializer | None = None) -> None:
        self.endpoint_name = endpoint_name
        self.sagemaker_session = sagemaker_session or Session()
        self.serializer = serializer if serializer is not None else IdentitySerializer()
        self.deserializer = deserializer if deserializer is not None else BytesDeserializer()
        # The variant that answered the last predict() (InvokeEndpoint's InvokedProductionVariant).
        self.last_invoked_variant: str | None = None
        # Kept once the endpoint is deleted, so delete_model() still knows what to delete.
        self._endpoint_config_name: str | None = None
        self._model_names: list[str] | None = None

    @property
    def content_type(self) -> str:
        return self.serializer.CONTENT_TYPE

    @property
    def accept(self) -> tuple[str, ...]:
        return self.deserializer.ACCEPT

    # -- invocation ----------------------------------------------------------------------------------
    def predict(self, data: Any, initial_args: dict[str, Any] | None = None, target_model: str | None = None,
                target_variant: str | None = None, inference_id: str | None = None,
                custom_attributes: str | None = None) -> Any:
        """Serialize ``data``, invoke the endpoint and return the deserialized response.

        ``initial_args`` are InvokeEndpoint arguments that take precedence over the ones built here
        (ContentType, Accept, ...). A model error raises boto3's ClientError with code ModelError.
        """
        args = self._request_args(data, initial_args, target_model, target_variant, inference_id,
                                  custom_attributes)
        response = self.sagemaker_session.sagemaker_runtime_client.invoke_endpoint(**args)
        self.last_invoked_variant = response.get("InvokedProductionVariant")
        return self.deserializer.deserialize(response["Body"], response.get("ContentType", ""))

    def _request_args(self, data: Any, initial_args: dict[str, Any] | None, target_model: str | None,
                      target_variant: str | None, inference_id: str | None,
                      custom_attributes: str | None) -> dict[str, Any]:
        args = dict(initial_args or {})
        args.setdefault("EndpointName", self.endpoint_name)
        args.setdefault("ContentType", self.content_type)
        args.setdefault("Accept", ", ".join(self.accept))
        if target_model:
            args["TargetModel"] = target_model
        if target_variant:
            args["TargetVariant"] = target_variant
        if inference_id:
            args["InferenceId"] = inference_id
        if custom_attributes:
            args["CustomAttributes"] = custom_attributes
        args["Body"] = self.serializer.serialize(data)
        return args

    # -- ground truth ---------------------------------------------------------------------------------
    def send_ground_truth(self, inference_id: str, label: Any, s3_uri: str | None = None) -> dict[str, Any]:
        """The true label of the invocation made with ``inference_id``, for the model-quality monitor."""
        return self.sagemaker_session.send_ground_truth(self.endpoint_name, [(inference_id, label)], s3_uri)

    def send_ground_truth_batch(self, labels: list[tuple[str, Any]], s3_uri: str | None = None) -> dict[str, Any]:
        return self.sagemaker_session.send_ground_truth(self.endpoint_name, labels, s3_uri)

    # -- experiments ---------------------------------------------------------------------------------
    def send_feedback(self, inference_id: str, reward: float) -> dict[str, Any]:
        """The reward for the invocation made with ``inference_id`` (predict(..., inference_id=...))."""
        return self.sagemaker_session.send_feedback(self.endpoint_name, [(inference_id, reward)])

    def send_feedback_batch(self, feedback: list[tuple[str, float]]) -> dict[str, Any]:
        """Rewards for many invocations at once: (inference id, reward) pairs, up to 1,000."""
        return self.sagemaker_session.send_feedback(self.endpoint_name, feedback)

    def experiment_report(self) -> dict[str, Any]:
        return self.sagemaker_session.experiment_report(self.endpoint_name)

    # -- the endpoint --------------------------------------------------------------------------------
    def describe_endpoint(self) -> dict[str, Any]:
        return self.sagemaker_session.describe_endpoint(self.endpoint_name)

    def endpoint_status(self) -> str:
        """InService, Creating, Updating, Failed, Deleting, ..."""
        return str(self.describe_endpoint()["EndpointStatus"])

    def update_weights(self, weights: dict[str, float], wait: bool = True, timeout: float = 300.0) -> dict[str, Any]:
        """Set the variants' traffic weights, e.g. ``{"A": 0.5, "B": 0.5}``; returns DescribeEndpoint."""
        return self.update_weights_and_capacities(weights=weights, wait=wait, timeout=timeout)

    def update_weights_and_capacities(self, weights: dict[str, float] | None = None,
                                      instance_counts: dict[str, int] | None = None, wait: bool = True,
                                      timeout: float = 300.0) -> dict[str, Any]:
        """UpdateEndpointWeightsAndCapacities for the variants named; returns DescribeEndpoint."""
        weights, instance_counts = weights or {}, instance_counts or {}
        if not weights and not instance_counts:
            raise ValueError("give weights and/or instance_counts for at least one variant")
        desired = []
        for variant in list(weights) + [v for v in instance_counts if v not in weights]:
            change: dict[str, Any] = {"VariantName": variant}
            if variant in weights:
                change["DesiredWeight"] = float(weights[variant])
            if variant in instance_counts:
                change["DesiredInstanceCount"] = int(instance_counts[variant])
            desired.append(change)
        self.sagemaker_session.sagemaker_client.update_endpoint_weights_and_capacities(
            EndpointName=self.endpoint_name, DesiredWeightsAndCapacities=desired)
        if wait:
            return self.sagemaker_session.wait_for_endpoint(self.endpoint_name, timeout=timeout)
        return self.describe_endpoint()

    def update_endpoint(self, initial_instance_count: int | None = None, instance_type: str | None = None,
                        model_name: str | None = None, tags: list[dict[str, str]] | None = None,
                        variant_name: str | None = None, wait: bool = True, timeout: float = 600.0) -> dict[str, Any]:
        """Move the endpoint to a new endpoint config: the current one with these changes.

        As in the SageMaker SDK, changing the model, instance type or count needs a single-variant
        endpoint, or ``variant_name`` to say which variant. Returns DescribeEndpoint.
        """
        sm = self.sagemaker_session.sagemaker_client
        current = self._current_config_name()
        config = sm.describe_endpoint_config(EndpointConfigName=current)
        variants = [dict(v) for v in config["ProductionVariants"]]
        changes = {k: v for k, v in (("InitialInstanceCount", initial_instance_count),
                                     ("InstanceType", instance_type), ("ModelName", model_name)) if v is not None}
        if changes:
            chosen = [v for v in variants if variant_name is None or v["VariantName"] == variant_name]
            if not chosen:
                raise ValueError(f"endpoint {self.endpoint_name} has no variant {variant_name!r}")
            if len(chosen) > 1:
                raise ValueError("the endpoint has several variants: pass variant_name to say which to change")
            chosen[0].update(changes)
        new_name = f"{self.endpoint_name[:40]}-{time.strftime('%Y%m%d%H%M%S')}-{time.time_ns() % 1000:03d}"
        request: dict[str, Any] = {"EndpointConfigName": new_name, "ProductionVariants": variants}
        for optional in ("DataCaptureConfig", "AsyncInferenceConfig", "KmsKeyId", "ShadowProductionVariants"):
            if config.get(optional):
                request[optional] = config[optional]
        if tags:
            request["Tags"] = tags
        sm.create_endpoint_config(**request)
        sm.update_endpoint(EndpointName=self.endpoint_name, EndpointConfigName=new_name)
        self._endpoint_config_name, self._model_names = new_name, None
        if wait:
            return self.sagemaker_session.wait_for_endpoint(self.endpoint_name, timeout=timeout)
        return self.describe_endpoint()

    def delete_endpoint(self, delete_endpoint_config: bool = True, wait: bool = False,
                        timeout: float = 300.0) -> None:
        """Delete the endpoint (and, by default, its endpoint config).

        Unlike the SageMaker SDK, the config's model names are remembered first, so ``delete_model``
        still works afterwards. ``wait`` blocks until the endpoint is gone.
        """
        config_name = self._current_config_name()
        self._model_names = None
        with contextlib.suppress(Exception):
            self.model_names()
        self.sagemaker_session.delete_endpoint(self.endpoint_name)
        if wait:
            self.sagemaker_session.wait_for_endpoint_deleted(self.endpoint_name, timeout=timeout)
        if delete_endpoint_config and config_name:
            self.sagemaker_session.delete_endpoint_config(config_name)

    def delete_model(self) -> None:
        """Delete the models the endpoint's config names; raises if any could not be deleted."""
        failures = []
        for name in self.model_names():
            try:
                self.sagemaker_session.delete_model(name)
            except Exception as exc:
                failures.append(f"{name}: {exc}")
        if failures:
            raise RuntimeError("could not delete model(s): " + "; ".join(failures))

    def _current_config_name(self) -> str:
        from botocore.exceptions import ClientError

        try:
            self._endpoint_config_name = str(self.describe_endpoint()["EndpointConfigName"])
        except ClientError:
            if self._endpoint_config_name is None:
                raise
        return self._endpoint_config_name

    def model_names(self) -> list[str]:
        """The models the endpoint's config names (remembered once the endpoint is deleted)."""
        if self._model_names is not None:
            return self._model_names
        config = self.sagemaker_session.sagemaker_client.describe_endpoint_config(
            EndpointConfigName=self._current_config_name())
        variants = config["ProductionVariants"] + config.get("ShadowProductionVariants", [])
        self._model_names = list(dict.fromkeys(v["ModelName"] for v in variants))
        return self._model_names

    def __repr__(self) -> str:
        return (f"Predictor(endpoint_name={self.endpoint_name!r}, serializer={type(self.serializer).__name__}, "
                f"deserializer={type(self.deserializer).__name__})")
