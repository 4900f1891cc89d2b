"""Export stripped models to LiteRT (TFLite) flatbuffers, for inference and on-device training.

Two entry points:

* `to_tflite`: an inference model, float32, float16, dynamic-range or full-integer
  int8, taking the original input (e.g. 28x28 floats, or 28x28x1 for a CNN).
  `SelectFeatures` becomes a builtin ``GATHER``; a stripped CNN uses ``CONV_2D``,
  ``MAX_POOL_2D`` / ``AVERAGE_POOL_2D``, ``RESHAPE``, and ``MEAN`` / ``REDUCE_MAX`` for a
  global pooling head.
* `to_trainable_tflite`: a plain Dense stack (the output of `tf_dynhp.strip` for an
  MLP; convolutional models are refused, naming the conv layer) as a model with the signatures ``train`` / ``infer`` / ``get_weights`` /
  ``set_weights`` / ``get_optimizer_state`` / ``set_optimizer_state`` whose
  weights are resource variables updated in place by SGD-momentum or Adam.

Both use builtin TFLite ops only (no Flex delegate), so the files run in the
plain `ai_edge_litert.interpreter.Interpreter` (see ``deploy/``). Conversion
goes through a SavedModel in a temporary folder and
`tf.lite.TFLiteConverter.from_saved_model`; the file is written to a temporary
file next to the target and moved into place with `os.replace`, so a failed
export never leaves a half-written file.

Why the backward pass of the trainable model is written by hand: a
`tf.GradientTape` inside the exported function leaves ``BroadcastGradientArgs``,
``ReluGrad`` and the gradient form of ``SparseSoftmaxCrossEntropyWithLogits``
in the graph, none of which has a builtin TFLite kernel. For a Dense stack the
gradients are a few matmuls (see `_DenseStackModule.train`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os

import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import keras
import numpy as np

from tf_dynhp._checks import invalid, write_atomic
from tf_dynhp.surgery import call_on_tensor

__all__ = [
    "QUANTIZATIONS",
    "QUANTIZATION_ALIASES",
    "OPTIMIZERS",
    "ExportReport",
    "to_tflite",
    "to_trainable_tflite",
    "check_exportable",
    "tflite_ops",
    "set_dense_weights",
]

#: Valid values of `to_tflite(quantization=...)`.
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
#: Accepted spellings of the quantizations, resolved by `_resolve_quantization`.
QUANTIZATION_ALIASES = {"float32": "none", "fp32": "none", "fp16": "float16", "dynamic_range": "dynamic", "full_integer": "int8"}
#: Valid values of `to_trainable_tflite(optimizer=...)`.
OPTIMIZERS = ("sgd", "adam")
#: Default number of representative examples used to calibrate int8 models.
CALIBRATION_EXAMPLES = 300

# Signature and tensor names of the exported models.
INFER_SIGNATURE = "serving_default"
INPUT_NAME = "x"
OUTPUT_NAME = "output"
LABEL_NAME = "y"

_DEFAULT_LR = {"sgd": 0.01, "adam": 0.001}  # Keras' defaults
_HIDDEN_ACTIVATIONS = ("relu", "linear", "sigmoid", "tanh")
_PathLike = str | os.PathLike


@dataclasses.dataclass
class ExportReport:
    """What an export wrote.

    Attributes:
        path: the written `.tflite` file.
        kind: ``"inference"`` or ``"trainable"``.
        quantization: ``"none"``, ``"float16"``, ``"dynamic"`` or ``"int8"``
            (``"none"`` for trainable models).
        size_bytes: size of the file.
        parameters: number of parameters of the Keras model.
        ops: the operator codes of the flatbuffer, in table order
            (builtin names such as ``"FULLY_CONNECTED"``, or the custom code of a
            custom op such as ``"FlexReluGrad"``).
        custom_ops: the ops of `ops` that are not TFLite builtins (empty here:
            both exports refuse them).
        signatures: signature key -> {"inputs": [...], "outputs": [...]} as the
            LiteRT interpreter reports them.
    """

    path: str
    kind: str
    quantization: str
    size_bytes: int
    parameters: int
    ops: list[str]
    custom_ops: list[str]
    signatures: dict[str, dict[str, list[str]]]

    @property
    def bytes_per_parameter(self) -> float:
        """File size divided by the parameter count."""
        return self.size_bytes / max(self.parameters, 1)


# --------------------------------------------------------------------------- flatbuffer helpers
def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema  # noqa: PLC0415
    except ImportError:  # pragma: no cover - older TF installs without ai_edge_litert
        from tensorflow.lite.python import schema_py_generated as schema  # noqa: PLC0415
    return schema


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        import tensorflow as tf  # noqa: PLC0415

        return tf.lite.Interpreter
    return Interpreter


def _read_model_bytes(model: bytes | bytearray | _PathLike) -> bytes:
    if isinstance(model, (bytes, bytearray)):
        content = bytes(model)
        where = "the given bytes"
    else:
        content = Path(model).read_bytes()
        where = str(model)
    if len(content) < 8 or content[4:8] != b"TFL3":
        raise ValueError(
            f"{where}: not a TFLite flatbuffer: expected the file identifier b'TFL3' at bytes "
            f"4..8, received {content[4:8]!r} ({len(content)} bytes in total)"
        )
    return content


def tflite_ops(model: bytes | bytearray | _PathLike) -> list[str]:
    """Names of the operator codes of a TFLite flatbuffer.

    Args:
        model: the flatbuffer's bytes or the path of a `.tflite` file.

    Returns:
        One name per operator code, in table order: the builtin name (e.g.
        ``"GATHER"``) or, for custom ops, the custom code (e.g. ``"FlexReluGrad"``).

    Raises:
        ValueError: the data is not a TFLite flatbuffer (no ``TFL3`` identifier).
    """
    content = _read_model_bytes(model)
    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    root = schema.Model.GetRootAsModel(content, 0)
    out = []
    for i in range(root.OperatorCodesLength()):
        code = root.OperatorCodes(i)
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            out.append(custom.decode() if custom else "CUSTOM")
        else:
            out.append(names.get(builtin, f"BUILTIN_{builtin}"))
    return out


def _custom_ops(ops: Sequence[str]) -> list[str]:
    builtin = {k for k in vars(_schema().BuiltinOperator) if not k.startswith("_")} - {"CUSTOM"}
    return [op for op in ops if op not in builtin]


# --------------------------------------------------------------------------- argument checks
_invalid = invalid


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Invalid value received for argument `model`. Expected a keras.Model (e.g. the "
            f"result of tf_dynhp.strip). Received: an object of type {type(model).__module__}.{type(model).__name__}"
        )
    inputs = getattr(model, "inputs", None) or []
    outputs = getattr(model, "outputs", None) or []
    if not model.built or len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(
            f"Model '{model.name}' must be built with exactly one input and one output (start it with "
            f"keras.Input(...)); received a model with {len(inputs)} inputs and {len(outputs)} outputs "
            f"(built={model.built})."
        )
    if any(d is None for d in inputs[0].shape[1:]):
        raise ValueError(
            f"Model '{model.name}': every input dimension but the batch must be known; received input shape "
            f"{tuple(inputs[0].shape)}."
        )
    other = [w for w in model.weights if keras.backend.standardize_dtype(w.dtype) != "float32"]
    if other:  # the TFLite builtin ops take float32 (the converter fails deep in MLIR on float64 MatMuls)
        raise ValueError(
            f"Model '{model.name}': TFLite export expects float32 weights; received {other[0].dtype} in "
            f"'{other[0].path}'. Rebuild the model in float32 (e.g. keras.config.set_floatx('float32') before "
            "building it) and copy the weights over with set_weights."
        )
    mixed = [layer for layer in model.layers
             if getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32") not in ("float32", None)]
    if mixed:  # mixed precision: float32 weights, float16 / bfloat16 ops, which the builtin float path does not take
        policy = mixed[0].dtype_policy
        raise ValueError(
            f"Model '{model.name}': TFLite export expects float32 computation; layer '{mixed[0].name}' computes in "
            f"{policy.compute_dtype} (dtype policy {policy.name!r}, e.g. keras.mixed_precision.set_global_policy"
            "('mixed_float16') when it was built). Rebuild the model under the 'float32' policy and copy the weights "
            "over with set_weights; quantization='float16' then gives a half-size file."
        )


def check_exportable(model: Any, trainable: bool = False) -> None:
    """Refuses, before any conversion, a model `to_tflite` cannot export (not a built
    one-input, one-output float32 Keras model) and, with `trainable`, one
    `to_trainable_tflite` cannot (not a plain Dense stack).

    Raises:
        TypeError, ValueError: as `to_tflite` / `to_trainable_tflite` would, naming the
            model or layer.
    """
    _check_model(model)
    if trainable:
        _read_dense_stack(model)


def _check_out_path(path: _PathLike) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"Invalid value received for argument `path`. Expected a str or os.PathLike. Received: {path!r}")
    out = Path(path).expanduser()
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"Cannot write '{out}': expected an existing folder to write into, but '{folder}' "
            f"{'is not a folder' if folder.exists() else 'does not exist'}. Create it first."
        )
    if out.is_dir():
        raise IsADirectoryError(f"Cannot write '{out}': expected a file path, received an existing folder.")
    return out


def _atomic_write(path: Path, content: bytes) -> None:
    """`_checks.write_atomic`: the file readable as the umask allows (a model to ship)."""
    write_atomic(path, content)


def _resolve_quantization(quantization: Any) -> str:
    key = QUANTIZATION_ALIASES.get(quantization, quantization) if isinstance(quantization, str) else None
    if key not in QUANTIZATIONS:
        raise _invalid(
            "quantization",
            f"one of {', '.join(repr(q) for q in QUANTIZATIONS)} (aliases: "
            f"{', '.join(f'{a!r} = {q!r}' for a, q in QUANTIZATION_ALIASES.items())})",
            quantization,
        )
    return key


def _input_spec(model: keras.Model, batch_size: int | None):
    import tensorflow as tf  # noqa: PLC0415

    shape = (batch_size,) + tuple(int(d) for d in model.inputs[0].shape[1:])
    return tf.TensorSpec(shape, dtype=model.inputs[0].dtype, name=INPUT_NAME)


def _representative_array(data: Any, model: keras.Model, limit: int) -> np.ndarray:
    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    try:
        given = np.asarray(data)  # its own dtype: integer pixels for a float-input model are refused below
        arr = np.asarray(given, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise _invalid(
            "representative_data", f"an array of shape (n, {', '.join(map(str, shape))}) with n >= 1",
            type(data).__name__,
        ) from err
    if arr.ndim != len(shape) + 1 or arr.shape[1:] != shape or arr.shape[0] < 1:
        raise ValueError(
            "Invalid value received for argument `representative_data`. Expected an array of shape "
            f"(n, {', '.join(map(str, shape))}) with n >= 1 (the model's input shape). Received: shape={arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("Invalid value received for argument `representative_data`. Expected finite values; received NaN or inf.")
    in_dtype = np.dtype(str(model.inputs[0].dtype))
    if not np.issubdtype(in_dtype, np.integer) and np.issubdtype(given.dtype, np.integer) and arr.max() > 1:
        # Stored pixels (uint8 0-255) for a model fed floats: calibrated on them, the int8 file
        # scored a probe's [0, 1] images at 9.5% accuracy (Keras 81.5%), without a word.
        raise ValueError(
            "Invalid value received for argument `representative_data`. The model's input is "
            f"{in_dtype.name}: expected the values as the model takes them, as fed to fit (e.g. images "
            f"divided by 255); received {given.dtype.name} values in [{arr.min():g}, {arr.max():g}] (stored "
            "pixels?). If the model was trained on these very values, pass representative_data.astype('float32').")
    if np.issubdtype(in_dtype, np.integer):  # calibrated as the model's dtype: a cast would make [0, 1] pixels zeros and ones
        info, whole = np.iinfo(in_dtype), bool(np.all(arr == np.round(arr)))
        if not whole or arr.min() < info.min or arr.max() > info.max:
            raise ValueError(
                "Invalid value received for argument `representative_data`. The model's input is "
                f"{in_dtype.name}: expected whole numbers in [{info.min}, {info.max}], the values as the model takes "
                f"them (e.g. uint8 pixels as stored); received values in [{arr.min():g}, {arr.max():g}]"
                f"{'' if whole else ' that are not whole numbers (e.g. pixels scaled to [0, 1])'}.")
    return arr[:limit]


# --------------------------------------------------------------------------- conversion
def _convert_saved_model(saved_dir: str, signature_keys: list[str], configure: Callable[[Any], None], what: str) -> bytes:
    import tensorflow as tf  # noqa: PLC0415

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_dir, signature_keys=signature_keys)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    configure(converter)
    try:
        return converter.convert()
    except Exception as err:  # ConverterError and friends
        raise RuntimeError(
            f"Converting {what} to TFLite with builtin ops only failed (Flex/select TF ops are "
            f"not allowed, so the file runs in the plain LiteRT interpreter): {err}"
        ) from err


def _finish(
    content: bytes, path: Path, kind: str, quantization: str, parameters: int, what: str
) -> ExportReport:
    ops = tflite_ops(content)
    custom = _custom_ops(ops)
    if custom:
        raise RuntimeError(f"{what}: the converted model uses non-builtin ops {custom}; expected builtin ops only.")
    interpreter = _interpreter_class()(model_content=content)
    signatures = {k: {"inputs": list(v["inputs"]), "outputs": list(v["outputs"])} for k, v in interpreter.get_signature_list().items()}
    _atomic_write(path, content)
    return ExportReport(
        path=str(path), kind=kind, quantization=quantization, size_bytes=len(content),
        parameters=parameters, ops=ops, custom_ops=custom, signatures=signatures,
    )


def to_tflite(
    model: keras.Model,
    path: _PathLike,
    quantization: str = "none",
    representative_data: Any = None,
    *,
    calibration_examples: int = CALIBRATION_EXAMPLES,
    per_channel: bool = True,
) -> ExportReport:
    """Writes an inference `.tflite` file of `model` and reports what it holds.

    The file has one signature, ``serving_default``, with input ``x`` (the
    model's original input, e.g. ``(batch, 28, 28)`` float32, batch dimension
    dynamic) and output ``output`` (the model's output, e.g. softmax
    probabilities). Only builtin ops are used; `SelectFeatures` becomes ``GATHER``.

    Quantization:

    * ``"none"``: float32 weights and compute.
    * ``"float16"``: float16 weights, dequantized to float32 at load time (half the size).
    * ``"dynamic"``: int8 weights, float activations quantized on the fly (a quarter).
      The TFLite converter leaves small weight tensors (fewer than 1024 values, e.g. a
      pruned 24x10 classifier) in float32: `report.size_bytes` is the file as written.
    * ``"int8"``: full-integer weights and activations, calibrated on the first
      `calibration_examples` rows of `representative_data`. Input and output stay
      float32 (a ``QUANTIZE``/``DEQUANTIZE`` pair at the ends), so callers feed the
      same pixels as to the float model. int8 I/O was measured on a 630-48-24-10
      MLP: 320 bytes smaller, ~4% faster per single example, same accuracy; not
      worth making every caller quantize with the file's scale and zero point.

    Args:
        model: a built single-input Keras model, typically `tf_dynhp.strip(...)`'s result.
        path: the `.tflite` file to write; its folder must exist. Written
            atomically (temporary file + `os.replace`).
        quantization: one of `QUANTIZATIONS` (or an alias of `QUANTIZATION_ALIASES`,
            e.g. ``"fp32"``, ``"fp16"``).
        representative_data: array of shape ``(n, *input_shape)`` in the range the
            model sees (e.g. training images in [0, 1]); required for ``"int8"``,
            ignored otherwise. Pass a shuffled sample; 200-500 examples suffice.
        calibration_examples: how many rows of `representative_data` to use.
        per_channel: quantize weights ("dynamic", "int8") with one scale per output
            unit (default, more accurate) or one per tensor (False: ~12 bytes less per
            output unit; for small pruned models this overhead is a visible share).

    Returns:
        An `ExportReport` (size, parameter count, op names, signatures).

    Raises:
        TypeError: `model` is not a Keras model, or `path` not a path.
        ValueError: unknown `quantization` (the message lists the valid ones),
            missing or malformed `representative_data` for ``"int8"``, or a model
            without exactly one fully known input shape.
        FileNotFoundError: the folder of `path` does not exist.
        RuntimeError: the model cannot be converted with builtin ops only.
    """
    _check_model(model)
    quantization = _resolve_quantization(quantization)
    out = _check_out_path(path)
    if isinstance(calibration_examples, bool) or not isinstance(calibration_examples, (int, np.integer)) or calibration_examples < 1:
        raise _invalid("calibration_examples", "a positive integer", calibration_examples)
    calibration = None
    if quantization == "int8":
        if representative_data is None:
            raise ValueError(
                "quantization='int8' (full-integer) needs `representative_data` to calibrate the "
                "activation ranges: expected an array of shape (n, "
                f"{', '.join(str(int(d)) for d in model.inputs[0].shape[1:])}) with 200-500 training "
                "examples. Received: representative_data=None. (quantization='dynamic' needs none.)"
            )
        calibration = _representative_array(representative_data, model, int(calibration_examples))

    import tensorflow as tf  # noqa: PLC0415

    def configure(converter: Any) -> None:
        if quantization == "none":
            return
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantization == "float16":
            converter.target_spec.supported_types = [tf.float16]
            return
        if not per_channel:  # one scale per weight tensor: ~12 bytes less per output unit
            converter._experimental_disable_per_channel = True
        if quantization == "int8":
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.float32
            converter.inference_output_type = tf.float32

            in_dtype = np.dtype(str(model.inputs[0].dtype))  # a uint8 keras.Input takes uint8 calibration images

            def representative_dataset() -> Iterable[list[np.ndarray]]:
                for i in range(calibration.shape[0]):
                    yield [calibration[i : i + 1].astype(in_dtype, copy=False)]

            converter.representative_dataset = representative_dataset

    with tempfile.TemporaryDirectory(prefix="tf_dynhp_export_") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            INFER_SIGNATURE,
            lambda x: {OUTPUT_NAME: call_on_tensor(model, x, training=False)},
            input_signature=[_input_spec(model, None)],
        )
        archive.write_out(os.path.join(tmp, "saved_model"), verbose=False)
        content = _convert_saved_model(
            os.path.join(tmp, "saved_model"), [INFER_SIGNATURE], configure, f"model '{model.name}'"
        )
    return _finish(content, out, "inference", quantization, int(model.count_params()), f"model '{model.name}'")


# --------------------------------------------------------------------------- trainable export
@dataclasses.dataclass(frozen=True)
class _Stage:
    """One step of a Dense stack: an affine map (dense index) or an element-wise activation."""

    kind: str  # "dense" or "activation"
    index: int = -1  # dense index for "dense"
    activation: str = "linear"  # for "activation"


@dataclasses.dataclass
class _DenseStack:
    input_shape: tuple[int, ...]
    features: np.ndarray | None
    stages: list[_Stage]
    kernels: list[np.ndarray]
    biases: list[np.ndarray | None]
    num_classes: int
    input_dtype: str = "float32"  # a uint8 keras.Input stays uint8 on the device (cast to float32 inside)


def _activation_name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _read_dense_stack(model: keras.Model) -> _DenseStack:
    """Reads a stripped model as `[flatten] -> [gather] -> (Dense | activation)* -> softmax`."""
    from tf_dynhp.chain import parse_chain  # noqa: PLC0415
    from tf_dynhp.layers import L0Dense  # noqa: PLC0415

    chain = parse_chain(model)
    if chain.spatial:
        from tf_dynhp.kinds import DENSE_TYPES, ELEMENTWISE_TYPES  # noqa: PLC0415

        layer = next(lay for lay in chain.body if not isinstance(lay, DENSE_TYPES + ELEMENTWISE_TYPES))
        raise ValueError(
            f"Layer '{layer.name}' of class {type(layer).__name__}: to_trainable_tflite exports Dense stacks "
            "only (on-device training of convolutional models is not supported). Export the model for "
            "inference with to_tflite, or train on the device a model of Flatten and Dense layers."
        )
    stages: list[_Stage] = []
    kernels: list[np.ndarray] = []
    biases: list[np.ndarray | None] = []
    for layer in chain.body:
        if isinstance(layer, L0Dense):
            raise ValueError(
                f"Layer '{layer.name}' is an L0Dense (gated) layer; to_trainable_tflite exports plain "
                "Dense stacks. Expected the stripped model: pass tf_dynhp.strip(model)."
            )
        if isinstance(layer, keras.layers.Dropout):
            continue  # identity at inference; not applied on device (documented)
        if isinstance(layer, keras.layers.Dense):  # (float32 weights: `_check_model` refused the others)
            stages.append(_Stage("dense", index=len(kernels)))
            kernels.append(np.asarray(keras.ops.convert_to_numpy(layer.kernel), np.float32))
            biases.append(np.asarray(keras.ops.convert_to_numpy(layer.bias), np.float32) if layer.use_bias else None)
        act = _activation_name(layer.activation)
        if act != "linear":
            stages.append(_Stage("activation", activation=act))
    # The final softmax (if any) is folded into the loss; everything before it must be differentiable here.
    if stages and stages[-1].kind == "activation" and stages[-1].activation == "softmax":
        stages.pop()
    for stage in stages:
        if stage.kind == "activation" and stage.activation not in _HIDDEN_ACTIVATIONS:
            where = "as the last activation" if stage is stages[-1] else "between Dense layers"
            raise ValueError(
                f"Model '{model.name}' uses activation '{stage.activation}' {where}; to_trainable_tflite "
                f"supports {', '.join(_HIDDEN_ACTIVATIONS)} between Dense layers and a final softmax "
                "(or linear logits)."
            )
    if stages[-1].kind != "dense":
        raise ValueError(
            f"Model '{model.name}' ends with activation '{stages[-1].activation}'; expected a final Dense "
            "layer with softmax (or linear logits), trained with cross-entropy."
        )
    return _DenseStack(
        input_shape=chain.input_shape,
        features=None if chain.features is None else np.asarray(chain.features, np.int32),
        stages=stages,
        kernels=kernels,
        biases=biases,
        num_classes=int(kernels[-1].shape[1]),
        input_dtype=str(model.inputs[0].dtype),
    )


def _weight_names(stack: _DenseStack) -> list[str]:
    names = []
    for k, b in enumerate(stack.biases):
        names.append(f"kernel_{k}")
        if b is not None:
            names.append(f"bias_{k}")
    return names


def _build_module(stack: _DenseStack, optimizer: str, hyper: dict[str, float], batch_size: int | None):
    """A tf.Module holding the weights and optimizer slots as variables, with the five signatures."""
    import tensorflow as tf  # noqa: PLC0415

    flat_dim = int(math.prod(stack.input_shape))
    slot_prefixes = ("momentum",) if optimizer == "sgd" else ("m", "v")
    weight_names = _weight_names(stack)
    initial = {}
    for k, (kernel, bias) in enumerate(zip(stack.kernels, stack.biases)):
        initial[f"kernel_{k}"] = kernel
        if bias is not None:
            initial[f"bias_{k}"] = bias
    x_spec = tf.TensorSpec((batch_size,) + stack.input_shape, tf.as_dtype(stack.input_dtype), name=INPUT_NAME)
    y_spec = tf.TensorSpec((batch_size,), tf.int32, name=LABEL_NAME)

    class DenseStackModule(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="dense_stack")
            self.weights = {n: tf.Variable(initial[n], name=n) for n in weight_names}
            self.slots = {
                f"{p}_{n}": tf.Variable(np.zeros_like(initial[n]), name=f"{p}_{n}")
                for p in slot_prefixes
                for n in weight_names
            }
            if optimizer == "adam":
                self.slots["step"] = tf.Variable(0.0, dtype=tf.float32, name="step")
            self.state_names = sorted(self.slots)

        def forward(self, x, params):
            h = tf.reshape(tf.cast(x, tf.float32), [-1, flat_dim])  # (a no-op for float32 inputs)
            if stack.features is not None:
                h = tf.gather(h, tf.constant(stack.features), axis=1)
            trace = []
            bare_matmul = False  # the last stage was a matmul without a bias add
            for stage in stack.stages:
                if stage.kind == "dense":
                    out = tf.matmul(h, params[f"kernel_{stage.index}"])
                    if f"bias_{stage.index}" in params:
                        out = out + params[f"bias_{stage.index}"]
                elif stage.activation == "relu" and bare_matmul:
                    # The TFLite converter drops a relu (or a maximum with 0, at a fixed batch)
                    # straight after a bias-free matmul: the file computed the network without
                    # it. A select is kept.
                    out = tf.where(h > 0, h, tf.zeros_like(h))
                elif stage.activation == "relu":
                    out = tf.nn.relu(h)
                elif stage.activation == "sigmoid":
                    out = tf.math.sigmoid(h)
                elif stage.activation == "tanh":
                    out = tf.math.tanh(h)
                else:  # linear
                    out = h
                bare_matmul = stage.kind == "dense" and f"bias_{stage.index}" not in params
                trace.append((stage, h, out))
                h = out
            return h, trace

        def read(self) -> dict[str, Any]:
            return {n: tf.identity(v) for n, v in self.weights.items()}

        def gradients(self, x, y, params):
            """Loss and gradients of the mean sparse cross-entropy, by explicit backpropagation."""
            logits, trace = self.forward(x, params)
            log_probs = tf.nn.log_softmax(logits)
            onehot = tf.one_hot(y, stack.num_classes, dtype=tf.float32)
            n = tf.cast(tf.shape(logits)[0], tf.float32)
            loss = -tf.reduce_sum(onehot * log_probs) / n
            grad = (tf.exp(log_probs) - onehot) / n  # d loss / d logits
            grads = {}
            first_dense = next(i for i, (s, _, _) in enumerate(trace) if s.kind == "dense")
            for i in range(len(trace) - 1, first_dense - 1, -1):
                stage, inp, out = trace[i]
                if stage.kind == "dense":
                    kname, bname = f"kernel_{stage.index}", f"bias_{stage.index}"
                    grads[kname] = tf.matmul(inp, grad, transpose_a=True)
                    if bname in params:
                        grads[bname] = tf.reduce_sum(grad, axis=0)
                    if i > first_dense:
                        grad = tf.matmul(grad, params[kname], transpose_b=True)
                elif stage.activation == "relu":
                    grad = grad * tf.cast(inp > 0, tf.float32)
                elif stage.activation == "sigmoid":
                    grad = grad * out * (1.0 - out)
                elif stage.activation == "tanh":
                    grad = grad * (1.0 - out * out)
            return loss, grads

        def apply(self, grads) -> None:
            lr = hyper["learning_rate"]
            if optimizer == "sgd":
                mu = hyper["momentum"]
                for n, g in grads.items():
                    m = self.slots[f"momentum_{n}"]
                    m_new = mu * m - lr * g  # Keras SGD: m = momentum * m - lr * g; w += m
                    m.assign(m_new)
                    self.weights[n].assign_add(m_new)
                return
            b1, b2, eps = hyper["beta_1"], hyper["beta_2"], hyper["epsilon"]
            step = self.slots["step"]
            t = step + 1.0
            step.assign(t)
            alpha = lr * tf.sqrt(1.0 - tf.pow(b2, t)) / (1.0 - tf.pow(b1, t))  # Keras Adam bias correction
            for n, g in grads.items():
                m, v = self.slots[f"m_{n}"], self.slots[f"v_{n}"]
                m_new = m + (g - m) * (1.0 - b1)
                v_new = v + (g * g - v) * (1.0 - b2)
                m.assign(m_new)
                v.assign(v_new)
                self.weights[n].assign_sub(m_new * alpha / (tf.sqrt(v_new) + eps))

        @tf.function(input_signature=[x_spec, y_spec])
        def train(self, x, y):
            params = self.read()  # every weight read once, before any update
            loss, grads = self.gradients(x, y, params)
            self.apply(grads)
            return {"loss": loss}

        @tf.function(input_signature=[x_spec])
        def infer(self, x):
            logits, _ = self.forward(x, self.read())
            return {"probabilities": tf.nn.softmax(logits)}

        @tf.function(input_signature=[])
        def get_weights(self):
            return self.read()

        @tf.function(input_signature=[])
        def get_optimizer_state(self):
            return {n: tf.identity(self.slots[n]) for n in self.state_names}

    module = DenseStackModule()

    def make_setter(variables: dict[str, Any], names: list[str]):
        specs = [tf.TensorSpec(variables[n].shape, tf.float32, name=n) for n in names]

        @tf.function(input_signature=specs)
        def setter(*values):
            for n, value in zip(names, values):
                variables[n].assign(value)
            return {"count": tf.constant(len(names), tf.int32)}

        return setter

    module.set_weights = make_setter(module.weights, weight_names)
    module.set_optimizer_state = make_setter(module.slots, module.state_names)
    return module


def to_trainable_tflite(
    model: keras.Model,
    path: _PathLike,
    optimizer: str = "sgd",
    learning_rate: float | None = None,
    momentum: float = 0.9,
    batch_size: int | None = None,
    *,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-7,
) -> ExportReport:
    """Writes a `.tflite` file that trains a plain Dense stack on the device.

    `model` is read as ``Input -> [Flatten] -> [SelectFeatures] -> (Dense |
    Activation | Dropout)* `` ending in a Dense layer with softmax (or linear
    logits), as `tf_dynhp.strip` returns it. Hidden activations: relu, linear,
    sigmoid, tanh. Dropout layers are skipped (no dropout on the device). The
    weights become resource variables; the signatures are:

    * ``train(x, y) -> {"loss"}``: one step on the batch (x in the model's input
      dtype, float32, or uint8 for a `keras.Input(dtype="uint8")`,
      ``(batch, *input_shape)``; y int32 class ids ``(batch,)``); the loss is the
      mean sparse categorical cross-entropy *before* the update. Updates the
      weights in place with SGD (Keras rule ``m = momentum*m - lr*g; w += m``) or
      Adam (Keras' rule and bias correction).
    * ``infer(x) -> {"probabilities"}``: softmax probabilities.
    * ``get_weights() -> {"kernel_0", "bias_0", ...}`` (index = Dense layer, in order).
    * ``set_weights(kernel_0=..., bias_0=..., ...) -> {"count"}``.
    * ``get_optimizer_state()`` / ``set_optimizer_state(...)``: SGD ``momentum_<w>``;
      Adam ``m_<w>``, ``v_<w>`` and ``step``, to resume training exactly.

    The backward pass is written out with matmuls (no `tf.GradientTape`), so the
    file has builtin ops only and runs in the plain LiteRT interpreter. The
    learning rate and optimizer constants are baked into the file.

    Args:
        model: the stripped Keras model (plain Dense layers).
        path: the `.tflite` file to write; its folder must exist.
        optimizer: ``"sgd"`` (with `momentum`) or ``"adam"``.
        learning_rate: step size; defaults to Keras' default (0.01 SGD, 0.001 Adam).
        momentum: SGD momentum in [0, 1) (0 gives plain SGD).
        batch_size: fixed batch size of ``train``/``infer``, or None for a dynamic one.
        beta_1, beta_2, epsilon: Adam constants (Keras defaults).

    Returns:
        An `ExportReport` (kind ``"trainable"``).

    Raises:
        TypeError: `model` is not a Keras model.
        ValueError: unknown optimizer or bad hyper-parameter, or a model that is not
            a plain Dense stack (gated layers, unsupported activations).
        FileNotFoundError: the folder of `path` does not exist.
        RuntimeError: the conversion needs non-builtin ops.
    """
    _check_model(model)
    if not isinstance(optimizer, str) or optimizer.lower() not in OPTIMIZERS:
        raise _invalid("optimizer", f"one of {', '.join(repr(o) for o in OPTIMIZERS)}", optimizer)
    optimizer = optimizer.lower()
    if learning_rate is None:
        learning_rate = _DEFAULT_LR[optimizer]
    for name, value, low, high in (
        ("learning_rate", learning_rate, 0.0, math.inf),
        ("momentum", momentum, 0.0, 1.0),
        ("beta_1", beta_1, 0.0, 1.0),
        ("beta_2", beta_2, 0.0, 1.0),
        ("epsilon", epsilon, 0.0, math.inf),
    ):
        ok_low = value > low if name in ("learning_rate", "epsilon") else value >= low
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (ok_low and value < high):
            bounds = "a float > 0" if name in ("learning_rate", "epsilon") else "a float in [0, 1)"
            raise _invalid(name, bounds, value)
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
        raise _invalid("batch_size", "a positive integer or None (dynamic batch)", batch_size)
    out = _check_out_path(path)
    stack = _read_dense_stack(model)
    hyper = dict(learning_rate=float(learning_rate), momentum=float(momentum), beta_1=float(beta_1), beta_2=float(beta_2), epsilon=float(epsilon))
    module = _build_module(stack, optimizer, hyper, None if batch_size is None else int(batch_size))

    import tensorflow as tf  # noqa: PLC0415

    signatures = {
        "train": module.train.get_concrete_function(),
        "infer": module.infer.get_concrete_function(),
        "get_weights": module.get_weights.get_concrete_function(),
        "set_weights": module.set_weights.get_concrete_function(),
        "get_optimizer_state": module.get_optimizer_state.get_concrete_function(),
        "set_optimizer_state": module.set_optimizer_state.get_concrete_function(),
    }

    def configure(converter: Any) -> None:
        converter.experimental_enable_resource_variables = True

    with tempfile.TemporaryDirectory(prefix="tf_dynhp_export_") as tmp:
        saved = os.path.join(tmp, "saved_model")
        tf.saved_model.save(module, saved, signatures=signatures)
        content = _convert_saved_model(saved, list(signatures), configure, f"the trainable model of '{model.name}'")
    return _finish(content, out, "trainable", "none", int(model.count_params()), f"model '{model.name}'")


def set_dense_weights(model: keras.Model, weights: Mapping[str, np.ndarray]) -> None:
    """Loads weights trained on the device (``get_weights`` names) back into the Keras model.

    Args:
        model: the stripped model the trainable file was exported from.
        weights: ``{"kernel_0": ..., "bias_0": ..., ...}``, e.g. the arrays of the
            `.npz` file ``deploy/train_on_device.py --weights`` writes.

    Raises:
        ValueError: a weight is missing or has the wrong shape (the message names it).
    """
    _check_model(model)
    from tf_dynhp.chain import parse_chain  # noqa: PLC0415

    dense = [layer for layer in parse_chain(model).body if isinstance(layer, keras.layers.Dense)]
    updates = []
    for k, layer in enumerate(dense):
        for attr, name in (("kernel", f"kernel_{k}"), ("bias", f"bias_{k}")):
            variable = getattr(layer, attr, None)
            if variable is None or (attr == "bias" and not layer.use_bias):
                continue
            if name not in weights:
                raise ValueError(f"Missing weight '{name}' for layer '{layer.name}'. Received keys: {sorted(weights)}")
            value = np.asarray(weights[name], np.float32)
            if value.shape != tuple(variable.shape):
                raise ValueError(
                    f"Weight '{name}' of layer '{layer.name}': expected shape {tuple(variable.shape)}, received {value.shape}"
                )
            updates.append((variable, value))
    for variable, value in updates:
        variable.assign(value)
