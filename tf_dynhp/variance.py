"""Exact per-example gradient variance of dense layers (for paper Eq. 8, CABS-style).

For a dense layer `Y = A W + b`, example i's kernel gradient is the outer product
`g_i = A_i^T D_i` (D_i = d loss_i / d Y_i). Eq. 8 needs only the *sum* over all
parameters of the unbiased per-parameter variance (Balles et al. 2017),

    ||S||_1 = sum_params (sum_i g_i^2 - B * mean^2) / (B - 1),

and the sum of squares of an outer product factorises:
`sum_params g_i^2 = ||A_i||^2 * ||D_i||^2`. The mean gradient is the batch
gradient the step computes anyway. So `||S||_1` costs two row norms per layer:
no per-example loop, no per-example gradient tensors, no extra matmul. Tested
against brute-force per-example gradients in `tests/test_variance.py`.
"""

from __future__ import annotations

from keras import ops

__all__ = ["dense_variance_l1"]


def dense_variance_l1(a, d, mean_kernel_grad, mean_bias_grad=None):
    """||S||_1 of a dense layer's kernel (and bias): the summed per-example gradient variance.

    Args:
        a: (B, inputs) inputs as multiplied by the kernel (gated inputs for `L0Dense`).
        d: (B, units) per-example gradients of each example's own loss w.r.t. the
            pre-activation.
        mean_kernel_grad: (inputs, units) the batch-mean data-loss gradient of the
            kernel, `A^T D / B`.
        mean_bias_grad: (units,) the batch-mean bias gradient `mean_i D_i`, or None
            for a layer without bias.

    Returns:
        Scalar sum over all parameters of the per-example gradient variance
        (unbiased; B = 1 gives 0). Divide by B for the variance of the batch mean.
    """
    b = ops.cast(ops.shape(a)[0], a.dtype)
    denom = ops.maximum(b - 1.0, 1.0)
    d_sq = ops.sum(d * d, axis=1)
    total = ops.sum(ops.sum(a * a, axis=1) * d_sq) - b * ops.sum(ops.square(mean_kernel_grad))
    if mean_bias_grad is not None:
        total = total + ops.sum(d_sq) - b * ops.sum(ops.square(mean_bias_grad))
    return ops.maximum(total, 0.0) / denom
