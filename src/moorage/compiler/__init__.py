"""The edge compiler: a trained model in, a signed edge package (``moorage.edge.package``) out.

``compile_model`` exports a scikit-learn (pipelines included), XGBoost, LightGBM, PyTorch or ONNX model to
one ONNX graph (``export.py``), optimises it with onnxruntime and optionally quantises it to int8
(``optimize.py``), compares it with the original on a validation sample and refuses a drop beyond the
tolerance (``validate.py``), and writes the package with its manifest and signature (``compile.py``). The
model is found and loaded as an endpoint's instance loads it (``source.py`` over ``runtimes``).
``jobs.py`` runs the same in a child process for the server's CreateCompilationJob and
CreateEdgePackagingJob.

Importing this package is cheap: onnx, onnxruntime, skl2onnx and the frameworks are imported by the
steps that use them.
"""

from moorage.compiler.compile import DEFAULT_TOLERANCE, CompileResult, compile_model, parse_input_shape
from moorage.compiler.source import SAGEMAKER_FRAMEWORKS, CompileError, framework_name
from moorage.compiler.validate import ValidationFailed, describe_drop

__all__ = ["DEFAULT_TOLERANCE", "SAGEMAKER_FRAMEWORKS", "CompileError", "CompileResult", "ValidationFailed",
           "compile_model", "describe_drop", "framework_name", "parse_input_shape"]
