"""tf_dynhp: Dynamic Hard Pruning (DynHP, Valerio et al.) for Keras 3.

Train a Keras MLP (or a small CNN) already compressed under a fixed memory budget::

    import tf_dynhp
    result = tf_dynhp.fit(model, x, y, method="dynhp", alpha_bs=0.972,
                          budget_kb=tf_dynhp.memory.mo_kb(model, batch_size=512))
    result.model  # plain Keras model with smaller Dense (and Conv2D) layers

Importing the package registers the `L0Dense`, `L0Conv2D`, `SelectFeatures` and
`GatedModel` classes with Keras, so saved `.keras` files load back.
"""

from tf_dynhp import augment, batching, checkpoint, datasets, export, fused, gates, losses, memory, runs, storage
from tf_dynhp.batching import batch_increment, next_batch_size
from tf_dynhp.chain import parse_chain
from tf_dynhp.convert import strip, to_l0
from tf_dynhp.layers import L0Conv2D, L0Dense, SelectFeatures
from tf_dynhp.model import GatedModel
from tf_dynhp.plotting import plot_history
from tf_dynhp.state import TrainerState
from tf_dynhp.training import METHODS, FitResult, NonFiniteError, fit

__version__ = "0.1.0"

__all__ = [
    "FitResult",
    "GatedModel",
    "L0Conv2D",
    "L0Dense",
    "METHODS",
    "NonFiniteError",
    "SelectFeatures",
    "TrainerState",
    "augment",
    "batch_increment",
    "batching",
    "checkpoint",
    "datasets",
    "export",
    "fit",
    "fused",
    "gates",
    "losses",
    "memory",
    "next_batch_size",
    "parse_chain",
    "runs",
    "storage",
    "plot_history",
    "strip",
    "to_l0",
]
