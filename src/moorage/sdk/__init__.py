"""A SageMaker-Python-SDK-like layer over a moorage server: Session, Model, Predictor, (de)serializers.

Code written for ``sagemaker.Model``/``sagemaker.predictor.Predictor`` ports by changing imports::

    from moorage.sdk import Model, Session
    from moorage.sdk.serializers import CSVSerializer
    from moorage.sdk.deserializers import JSONDeserializer

    model = Model("model.joblib", image_uri="sklearn", entry_point="inference.py", source_dir="src")
    predictor = model.deploy(initial_instance_count=1, instance_type="ml.m5.large",
                             serializer=CSVSerializer(), deserializer=JSONDeserializer())
    predictor.predict([[1.0, 2.0, 3.0, 4.0]])
"""

from moorage.sdk import deserializers, serializers
from moorage.sdk.exceptions import UnexpectedStatusException
from moorage.sdk.model import Model
from moorage.sdk.predictor import Predictor
from moorage.sdk.session import Session

__all__ = ["Model", "Predictor", "Session", "UnexpectedStatusException", "deserializers", "serializers"]
