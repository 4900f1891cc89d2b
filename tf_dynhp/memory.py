"""Memory accounting: the paper's MO (Sec. 5.1, Eq. 9-10) and a full training footprint.

Units: floats are 4 bytes (the paper's 32-bit representation); a KB is 1024
bytes; the paper's "MBytes" in Tables 2-3 are 1000 of these KB, and its
"Training Memory" is the sum of MO over all epochs.

* **MO** (paper): weights and biases of the model as it is now (dense and conv
  kernels and biases), plus the `batch_size x input_dim` floats of the mini-batch
  (`input_dim`: selected features of a dense-first model, the whole image, e.g.
  784, of a conv model). Gate logits are not counted (the paper counts "the weight
  matrices of each layer ... plus a mini-batch").
* **full** (`memory_full_kb`): what a device really holds while training: every
  trainable variable (weights, biases, gate logits), their gradients, the
  optimizer's variables, and the activations of one batch. Per example
  (`layer_activation_floats`):

  - the input (`input_dim` floats);
  - per dense layer: pre-activation and output (2 x units), plus for an `L0Dense`
    the per-example gates and gated inputs (2 x inputs);
  - per conv layer with output H' x W' x C: pre-activation `conv(x) + b` and output
    (2 x H'W'C), plus for an `L0Conv2D` the per-example gates (C) and the gated
    pre-activation `(conv(x) + b) * z` (H'W'C);
  - per pooling layer: its output (H''W''C); per `SelectFeatures` inside a conv
    model: its output. Flatten and Reshape are views; element-wise layers
    (Dropout, Activation) are not counted, as before for the MLP.

  LeNet-5-Caffe gated (28x28x1 -> 20@24x24 -> pool 12x12 -> 50@8x8 -> pool 4x4 ->
  800 -> 500 -> 10): 784 + (20 + 3 * 11520) + 2880 + (50 + 3 * 3200) + 800
  + (2 * 800 + 2 * 500) + (2 * 500 + 2 * 10) = 52 314 floats per example.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from tf_dynhp._checks import real_number, whole_number

__all__ = [
    "BYTES_PER_FLOAT",
    "BYTES_PER_KB",
    "KB_PER_MB",
    "floats_to_kb",
    "kb_to_floats",
    "weight_count",
    "mo_kb_from_counts",
    "mo_kb",
    "max_batch_for_mo",
    "activation_floats_per_example",
    "layer_activation_floats",
    "memory_full_kb",
    "max_batch_for_full",
    "training_memory_mb",
]

BYTES_PER_FLOAT = 4
BYTES_PER_KB = 1024
#: The paper's MBytes are 1000 KB of 1024 bytes (Table 2: the dense MLP is "1.041").
KB_PER_MB = 1000


def floats_to_kb(n_floats: float) -> float:
    """KB (1024 bytes) taken by `n_floats` 32-bit floats."""
    return float(n_floats) * BYTES_PER_FLOAT / BYTES_PER_KB


def kb_to_floats(kb: float) -> int:
    """How many float32 values fit in `kb` KB (the inverse of `floats_to_kb`, rounded down):
    the weight count a size target allows."""
    return int(math.floor(float(kb) * BYTES_PER_KB / BYTES_PER_FLOAT))


def _weighted_layers(model: Any) -> list[Any]:
    from tf_dynhp.chain import WEIGHTED_TYPES, parse_chain

    if hasattr(model, "layers"):
        chain = parse_chain(model)
        return [layer for layer in chain.body if isinstance(layer, WEIGHTED_TYPES)]
    return list(model)


def _input_dim(model: Any) -> int:
    from tf_dynhp.chain import parse_chain

    return parse_chain(model).input_dim


def weight_count(model: Any) -> int:
    """Number of weights and biases of the dense and conv layers (gate logits excluded).

    Args:
        model: a Keras model accepted by `parse_chain`, or a list of dense / conv layers.
    """
    total = 0
    for layer in _weighted_layers(model):
        total += int(np.prod(layer.kernel.shape))
        if getattr(layer, "bias", None) is not None:
            total += int(np.prod(layer.bias.shape))
    return total


def mo_kb_from_counts(n_weights: int, batch_size: int, input_dim: int) -> float:
    """Paper MO in KB: 4 bytes x (weights + batch_size x input_dim) / 1024."""
    return floats_to_kb(n_weights + batch_size * input_dim)


def mo_kb(model: Any, batch_size: int, input_dim: int | None = None) -> float:
    """Paper MO (Sec. 5.1) of `model` trained with mini-batches of `batch_size`.

    `tf_dynhp.memory.mo_kb(mlp_784_300_100_10, batch_size=512)` is 2609.4 KB, the
    budget of the paper's fair comparison (Sec. 5.3) on MNIST.

    Args:
        model: Keras model (dense or conv chain, gated or not).
        batch_size: rows of the mini-batch.
        input_dim: floats per example; defaults to what the model reads (pruned
            input features are not fed; a conv model reads the whole image).

    Returns:
        MO in KB of 1024 bytes.
    """
    dim = _input_dim(model) if input_dim is None else whole_number("input_dim", input_dim, 1)
    return mo_kb_from_counts(weight_count(model), whole_number("batch_size", batch_size), dim)


def max_batch_for_mo(budget_kb: float, n_weights: int, input_dim: int) -> int:
    """Largest batch whose MO fits in `budget_kb` (paper Eq. 9-10 in consistent units).

    Eq. 9 gives the free memory `B_i = C - N_i`; the batch of epoch i+1 may grow
    to the largest size whose MO (model + batch) is at most C.

    Returns:
        The largest b >= 0 with `mo_kb_from_counts(n_weights, b, input_dim) <= budget_kb`.

    Raises:
        ValueError: `budget_kb` is not a finite number >= 0, `n_weights` not an integer
            >= 0 or `input_dim` not an integer >= 1.
    """
    budget_kb = real_number("budget_kb", budget_kb, "a finite number of KB >= 0", lambda v: v >= 0)
    n_weights, input_dim = whole_number("n_weights", n_weights), whole_number("input_dim", input_dim, 1)
    free_floats = budget_kb * BYTES_PER_KB / BYTES_PER_FLOAT - n_weights
    if free_floats < 0:
        return 0
    b = int(math.floor(free_floats / input_dim))
    # Guard the floor against floating point: step down until it fits.
    while b > 0 and mo_kb_from_counts(n_weights, b, input_dim) > budget_kb:
        b -= 1
    return b


def activation_floats_per_example(layer_dims: Sequence[tuple[int, int, bool]], input_dim: int) -> int:
    """Activation floats one example needs in training (see the module docstring).

    Args:
        layer_dims: `(inputs, units, gated)` of each dense layer in order.
        input_dim: features of the input batch.
    """
    total = input_dim
    for n_in, n_out, gated in layer_dims:
        total += 2 * n_out + (2 * n_in if gated else 0)
    return int(total)


def layer_activation_floats(layer: Any, in_shape: Sequence[int], out_shape: Sequence[int], spatial: bool = True) -> int:
    """Activation floats one example needs in training for one layer (module docstring).

    Args:
        layer: a layer of a supported chain.
        in_shape, out_shape: its per-example input and output shapes.
        spatial: whether the layer is in a conv model (a `SelectFeatures` there is a
            gather inside the model; in a dense-first model it is the data pipeline's).
    """
    from tf_dynhp.kinds import CONV_TYPES, DENSE_TYPES, POOLING_TYPES
    from tf_dynhp.layers import SelectFeatures

    gated = hasattr(layer, "log_alpha")
    n_out = int(np.prod(out_shape))
    if isinstance(layer, DENSE_TYPES):
        return activation_floats_per_example([(int(in_shape[-1]), int(out_shape[-1]), gated)], 0)
    if isinstance(layer, CONV_TYPES):
        return 2 * n_out + ((int(out_shape[-1]) + n_out) if gated else 0)
    if isinstance(layer, POOLING_TYPES) or (spatial and isinstance(layer, SelectFeatures)):
        return n_out
    return 0


def _activation_floats(model: Any, input_dim: int) -> int:
    from tf_dynhp.chain import io_shapes, parse_chain

    if not hasattr(model, "layers"):  # a list of dense layers
        dims = []
        for layer in model:
            n_in, n_out = (int(d) for d in layer.kernel.shape)
            dims.append((n_in, n_out, hasattr(layer, "log_alpha")))
        return activation_floats_per_example(dims, input_dim)
    chain = parse_chain(model)
    return input_dim + sum(layer_activation_floats(layer, *io_shapes(layer), spatial=chain.spatial) for layer in chain.body)


def _variable_floats(variables: Sequence[Any]) -> int:
    return int(sum(int(np.prod(v.shape)) for v in variables))


def memory_full_kb(model: Any, batch_size: int, optimizer: Any = None, input_dim: int | None = None) -> float:
    """Full training footprint in KB (module docstring): variables, gradients, optimizer, activations.

    Args:
        model: Keras model (dense or conv chain, gated or not).
        batch_size: rows of the mini-batch.
        optimizer: a *built* Keras optimizer; its variables are counted as they
            are. None counts two slots per trainable float (Adam) plus 2 scalars.
        input_dim: input floats per example (defaults as in `mo_kb`).
    """
    dim = _input_dim(model) if input_dim is None else whole_number("input_dim", input_dim, 1)
    batch_size = whole_number("batch_size", batch_size)
    trainable = _variable_floats(model.trainable_variables)
    if optimizer is not None and getattr(optimizer, "built", False):
        opt = _variable_floats(optimizer.variables)
    else:
        opt = 2 * trainable + 2
    fixed = 2 * trainable + opt
    per_example = _activation_floats(model, dim)
    return floats_to_kb(fixed + batch_size * per_example)


def max_batch_for_full(budget_kb: float, model: Any, optimizer: Any = None, input_dim: int | None = None) -> int:
    """Largest batch whose `memory_full_kb` fits in `budget_kb` (0 if none does)."""
    fixed = memory_full_kb(model, 0, optimizer, input_dim)
    per_example = memory_full_kb(model, 1, optimizer, input_dim) - fixed
    if budget_kb < fixed:
        return 0
    b = int(math.floor((budget_kb - fixed) / per_example))
    while b > 0 and memory_full_kb(model, b, optimizer, input_dim) > budget_kb:
        b -= 1
    return b


def training_memory_mb(memory_kb_per_epoch: Sequence[float]) -> float:
    """The paper's "Training Memory" (Tables 2-3): the sum of MO over epochs, in its MB (1000 KB)."""
    return float(np.sum(memory_kb_per_epoch)) / KB_PER_MB
