"""Graph optimisation and dynamic int8 quantisation with onnxruntime.

The order is onnxruntime's own advice: basic optimisations first (constant folding, redundant nodes
removed: standard ONNX ops only), then ``quantize_dynamic`` on that graph, then the final optimisation
level. Quantising after the extended fusions would miss the ``MatMul``/``Gemm`` nodes they fold into
contrib ops (``FusedGemm``, ``FusedMatMul``) that the quantiser does not know.

The final level is ``ORT_ENABLE_EXTENDED`` for a CPU target: its fusions are kernels of onnxruntime's CPU
execution provider, which is what ``moorage-edge`` runs, so the saved graph is still portable across CPUs.
``ORT_ENABLE_ALL`` is never saved: its layout optimisations (NCHWc) are chosen for the compiling machine's
instruction set, and onnxruntime itself warns against saving them. For a target with an accelerator
(``TargetPlatform.Accelerator``, a GPU ``TargetDevice``) the level is ``ORT_ENABLE_BASIC``: extended fusions
assign nodes to the CPU provider, which would pin them there on a device with another provider.

Dynamic int8 quantisation stores ``MatMul``/``Gemm`` weights as int8 and quantises activations at run time:
it shrinks and speeds up weight-heavy graphs (MLPs, torch models). Tree ensembles (XGBoost, LightGBM,
random forests) have no such weights: their size does not change, and the result says so.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from moorage.compiler.source import CompileError

EXTENDED, BASIC = "extended", "basic"
# TargetDevice values with a GPU or an NPU (SageMaker's enum): optimised with the basic level.
ACCELERATED_DEVICES = frozenset({
    "ml_p2", "ml_p3", "ml_g4dn", "ml_inf1", "ml_inf2", "ml_trn1", "ml_eia2", "jetson_tx1", "jetson_tx2",
    "jetson_nano", "jetson_xavier", "deeplens", "aisage", "qcs605", "qcs603", "amba_cv2", "amba_cv22", "amba_cv25",
    "coreml", "jacinto_tda4vm", "imx8mplus", "sitara_am57x", "rk3399",
})
_QUANTISED_OPS = frozenset({"MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger", "QLinearMatMul",
                            "DynamicQuantizeLSTM", "QAttention", "MatMulIntegerToFloat"})


@dataclass
class Optimized:
    model: bytes
    level: str
    level_reason: str
    quantization: str | None
    quantized_nodes: int
    note: str


def level_for(target_device: str | None, accelerator: str | None) -> tuple[str, str]:
    """(level, why) for the target."""
    if accelerator:
        return BASIC, (f"basic: the target has an accelerator ({accelerator}); extended fusions would pin nodes "
                       "to onnxruntime's CPU provider")
    if target_device and target_device in ACCELERATED_DEVICES:
        return BASIC, (f"basic: {target_device} has an accelerator; extended fusions would pin nodes to "
                       "onnxruntime's CPU provider")
    return EXTENDED, ("extended: the edge agent runs onnxruntime's CPU provider, whose fused kernels these are; "
                      "layout optimisations (level all) are left out, as they are specific to the compiling CPU")


def _optimise(model: bytes, level: str, work_dir: Path, name: str) -> bytes:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED if level == EXTENDED
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    target = work_dir / name
    options.optimized_model_filepath = str(target)
    try:
        ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CompileError(f"onnxruntime cannot load the exported graph: {type(exc).__name__}: {exc}") from exc
    return target.read_bytes()


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantiser logs, on the root logger, advice to pre-process the graph: the basic optimisation
    before it is that pre-processing, so the advice is noise in a user's terminal."""
    root = logging.getLogger()

    def drop(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def _count_quantised(model: bytes) -> int:
    import onnx

    graph = onnx.load_from_string(model).graph
    return sum(1 for node in graph.node if node.op_type in _QUANTISED_OPS)


def optimise(model: bytes, *, level: str, level_reason: str, quantize: str | None,
             work_dir: Path | None = None) -> Optimized:
    """The graph optimised at ``level`` (and quantised to int8 first when ``quantize == "int8"``)."""
    if quantize not in (None, "int8"):
        raise CompileError(f"quantize {quantize!r}: the only quantisation is int8 (dynamic).")
    with tempfile.TemporaryDirectory(prefix="moorage-optimise-", dir=work_dir) as temp:
        folder = Path(temp)
        basic = _optimise(model, BASIC, folder, "basic.onnx")
        quantised_nodes = 0
        note = ""
        if quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            (folder / "input.onnx").write_bytes(basic)
            try:
                with _quiet_root_logger():
                    quantize_dynamic(folder / "input.onnx", folder / "int8.onnx", weight_type=QuantType.QInt8)
            except Exception as exc:
                raise CompileError(f"int8 quantisation failed: {type(exc).__name__}: {exc}") from exc
            quantised = (folder / "int8.onnx").read_bytes()
            quantised_nodes = _count_quantised(quantised)
            if quantised_nodes:
                basic = quantised
                note = (f"int8: {quantised_nodes} MatMul/Gemm node(s) quantised (weights int8, activations "
                        "quantised at run time)")
            else:
                note = ("int8: nothing to quantise: the graph has no MatMul/Gemm weights (tree ensembles keep "
                        "their size); the model is kept in float")
        final = basic if level == BASIC else _optimise(basic, level, folder, "final.onnx")
    return Optimized(final, level, level_reason, quantize if quantised_nodes else None, quantised_nodes, note)
