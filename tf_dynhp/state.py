"""`TrainerState`: everything of a DynHP run that is not in the Keras model.

The epoch, the batch size and its grown candidate (Eq. 8-10), the surviving
units of every unit axis (the paper's masks Z, Eq. 7, stored as the indices of the
original units still alive), the kept input features, the retrace count and the
history. It serializes to JSON so that a checkpoint restores it exactly (the
gate-noise seed state lives in the model's variables).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

__all__ = ["TrainerState"]


@dataclasses.dataclass
class TrainerState:
    """Serializable state of `tf_dynhp.fit` between epochs.

    Attributes:
        method: "dense", "sp", "hp" or "dynhp".
        seed: the run's seed (drawn and recorded when the user gave none).
        epoch: number of epochs completed.
        batch_size: mini-batch size of the next epoch (b_i).
        candidate_batch_size: the grown candidate of the last epoch boundary (b~_{i+1}).
        alive: per unit axis (`tf_dynhp.units.unit_axes`, the output axis
            excluded), indices of its *original* units still alive. For a dense
            chain the axes are the inputs of each dense layer (axis 0: features of
            the flattened input); a conv chain adds the output channels of each
            conv layer and the flattened features. The mask Z of Eq. 7 is
            `np.isin(arange(original), alive[k])`.
        original_inputs: per unit axis, its number of units before any pruning.
        retraces: how many times step/eval functions were traced so far.
        first_trace_seconds: seconds spent tracing the first model's step and
            evaluator before epoch 1 (included in `history["trace_seconds"][0]`; the
            traces after rebuilds, and at the start of `fit(deterministic_from=...)`'s
            phase, are the retraces).
        gate_kernel: how the `L0Dense` gates are sampled in training, "fused" or
            "tf" (`tf_dynhp.fit`'s resolved `gate_kernel`; the two draw different noise).
        l0_lambda: under `fit(target_kb=...)`, the multiplier λ for the next epoch
            (`tf_dynhp.target.update_lambda`); None without a target.
        axis_names: a label per unit axis (`tf_dynhp.units.axis_names`), for
            `plot_history`; empty in checkpoints written before it.
        early_stopped: a `keras.callbacks.EarlyStopping` ended the run: it is
            finished, and a resume trains nothing (another callback's stop is a
            pause: a resume goes on).
        history: per-epoch lists (see `tf_dynhp.fit`).
    """

    method: str
    seed: int
    epoch: int = 0
    batch_size: int = 0
    candidate_batch_size: int = 0
    alive: list[list[int]] = dataclasses.field(default_factory=list)
    original_inputs: list[int] = dataclasses.field(default_factory=list)
    retraces: int = 0
    gate_kernel: str = "tf"
    first_trace_seconds: float = 0.0
    l0_lambda: float | None = None
    early_stopped: bool = False
    axis_names: list[str] = dataclasses.field(default_factory=list)
    history: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def masks(self) -> list[np.ndarray]:
        """The binary masks Z (Eq. 7) of every unit axis, over the original units."""
        return [np.isin(np.arange(n), np.asarray(a)) for n, a in zip(self.original_inputs, self.alive)]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), default=_json_default)

    @classmethod
    def from_json(cls, text: str) -> "TrainerState":
        return cls(**json.loads(text))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Cannot serialize {type(value).__name__}")
