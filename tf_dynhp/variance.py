"""Exact per-example gradient variance of dense layers (for paper Eq. 8, CABS-style).

For a dense layer `Y = A W + b`, the gradient of example i's loss is the outer
product `A_i^T D_i` (D_i = d loss_i / d Y_i), so over a batch

    sum_i g_i^2 = (A * A)^T (D * D)          mean_i g_i = A^T D / B

and the unbiased per-parameter variance (Balles et al. 2017) is
`(sum_i g_i^2 - B * mean^2) / (B - 1)`: two matmuls, no per-example loop and no
per-example gradient tensors. Tested against brute-force per-example gradients
in `tests/test_variance.py`.
"""

from __future__ import annotations

from keras import ops

__all__ = ["dense_variance_l1"]


def dense_variance_l1(a, d, use_bias: bool = True):
    """||S||_1 of a dense layer's kernel (and bias): the summed per-example gradient variance.

    Args:
        a: (B, inputs) layer inputs as multiplied by the kernel (gated inputs for `L0Dense`).
        d: (B, units) per-example gradients of each example's own loss w.r.t. the
            pre-activation.
        use_bias: include the bias variance (its per-example gradient is D_i).

    Returns:
        Scalar sum over all parameters of the per-example gradient variance
        (unbiased; B = 1 gives 0). Divide by B for the variance of the batch mean.
    """
    b = ops.cast(ops.shape(a)[0], a.dtype)
    denom = ops.maximum(b - 1.0, 1.0)
    sumsq_w = ops.matmul(ops.transpose(a * a), d * d)
    mean_w = ops.matmul(ops.transpose(a), d) / b
    total = ops.sum(ops.relu(sumsq_w - b * ops.square(mean_w))) / denom
    if use_bias:
        sumsq_b = ops.sum(d * d, axis=0)
        mean_b = ops.mean(d, axis=0)
        total = total + ops.sum(ops.relu(sumsq_b - b * ops.square(mean_b))) / denom
    return total
