"""moorage: self-hosted model serving and monitoring that speaks SageMaker's wire protocols."""

__version__ = "0.1.0"
