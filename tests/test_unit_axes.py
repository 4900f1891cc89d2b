"""Unit axes and keep sets (`tf_dynhp.units.unit_axes`, `effective_keep`) on small built
models, without training: the bookkeeping every rebuild rests on, checked against maps
and keep sets written out by hand (issue 17's mutation run)."""

import keras
import numpy as np
import pytest

from tf_dynhp import to_l0
from tf_dynhp.layers import SelectFeatures
from tf_dynhp.kinds import layer_kind
from tf_dynhp.units import UnitAxis, effective_keep, unit_axes

# Private helpers, imported in one place.
from tf_dynhp.units import _shape_map


def _body(model):
    return [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]


def _conv_model(extra=()):
    """(6, 6, 2) -> Conv2D(3, 3) -> MaxPool(2) -> Flatten [-> extra] -> Dense(4) -> Dense(3), gated."""
    keras.utils.set_random_seed(0)
    layers = [keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3, activation="relu"), keras.layers.MaxPooling2D(2),
              keras.layers.Flatten(), *extra, keras.layers.Dense(4, activation="relu"), keras.layers.Dense(3, activation="softmax")]
    return to_l0(keras.Sequential(layers), dataset_size=10)


# --------------------------------------------------------------------------- _shape_map
def test_shape_map_of_flatten_and_reshapes():
    np.testing.assert_array_equal(_shape_map((2, 2, 3), (12,)), np.arange(12) % 3)
    np.testing.assert_array_equal(_shape_map((4, 3), (2, 6)), [0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(_shape_map((5, 4), (5, 4)), np.arange(4))
    assert _shape_map((4, 6), (3, 8)) is None  # rows of 8 read different units
    assert _shape_map((2, 3), (3, 2)) is None


# --------------------------------------------------------------------------- unit_axes
def test_unit_axes_of_a_dense_chain():
    keras.utils.set_random_seed(0)
    model = to_l0(keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dropout(0.1),
                                    keras.layers.Dense(3, activation="softmax")]), dataset_size=10)
    body = _body(model)
    axes, layer_axes = unit_axes(body)
    assert [a.size for a in axes] == [5, 4, 3]
    assert layer_axes == [(0, 1), (1, 1), (1, 2)]  # the Dropout keeps its axis
    assert [a.gated_by for a in axes] == [[body[0]], [body[2]], []]  # dense gates sit on the inputs
    assert [a.producer for a in axes] == [None, body[0], body[2]]
    assert all(a.source is None and a.index_map is None for a in axes)


def test_unit_axes_of_a_conv_chain():
    model = _conv_model()
    conv, pool, flatten, dense1, dense2 = _body(model)
    axes, layer_axes = unit_axes(_body(model))
    assert [a.size for a in axes] == [2, 3, 12, 4, 3]
    assert layer_axes == [(0, 1), (1, 1), (1, 2), (2, 3), (3, 4)]
    assert [a.gated_by for a in axes] == [[], [conv], [dense1], [dense2], []]  # conv gates sit on the outputs
    assert [a.producer for a in axes] == [None, conv, None, dense1, dense2]
    assert axes[2].source == 1 and [a.source for a in axes[:2] + axes[3:]] == [None] * 4
    np.testing.assert_array_equal(axes[2].index_map, np.arange(12) % 3)  # row (h*2 + w)*3 + c copies channel c


def test_unit_axes_follow_select_features_after_flatten():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(3, 3), keras.layers.MaxPooling2D(2),
                              keras.layers.Flatten(), SelectFeatures([1, 2, 4, 6, 7, 11]), SelectFeatures([0, 2, 3, 5]),
                              keras.layers.Dense(4), keras.layers.Dense(3)])
    axes, layer_axes = unit_axes(_body(model))
    assert [a.size for a in axes] == [2, 3, 4, 4, 3]
    assert layer_axes == [(0, 1), (1, 1), (1, 2), (1, 2), (1, 2), (2, 3), (3, 4)]  # one axis for the run
    # Flattened rows 1, 4, 6, 11 (the second selection of the first): channels 1, 1, 0, 2.
    np.testing.assert_array_equal(axes[2].index_map, [1, 1, 0, 2])


def test_flatten_after_select_features_is_refused():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 3)), keras.layers.Reshape((12,)), SelectFeatures([0, 5]),
                              keras.layers.Reshape((2, 1)), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"by tf_dynhp\. A Flatten/Reshape right after SelectFeatures is not supported; select after reshaping\. Supported"):
        unit_axes(_body(model))


def test_reshape_mixing_units_after_a_weighted_layer_is_refused_naming_it():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6), keras.layers.Reshape((3, 2), name="mixer"),
                              keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"'mixer'.*\(6,\) to \(3, 2\)") as info:
        unit_axes(_body(model))
    assert (
        "It reshapes (6,) to (3, 2), mixing the units of the last axis, which pruning removes; only reshapes "
        "that keep each unit a whole slice (e.g. Flatten) are supported after a Conv2D/Dense layer. Supported"
    ) in str(info.value)


def test_unit_axes_of_a_body_ending_in_an_index_map():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 2)), keras.layers.Dense(3), keras.layers.Flatten()])
    axes, layer_axes = unit_axes(_body(model))
    assert [a.size for a in axes] == [2, 3, 12] and layer_axes == [(0, 1), (1, 2)]
    np.testing.assert_array_equal(axes[2].index_map, np.arange(12) % 3)


def test_the_error_names_the_reshape_that_mixes_not_the_flatten_before_it():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(3, 3), keras.layers.Flatten(name="flat"),
                              keras.layers.Reshape((6, 2), name="mixer"), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"Layer 'mixer'.*\(12,\) to \(6, 2\)"):
        unit_axes(_body(model))


def test_reshape_mixing_the_model_input_is_allowed_and_unfollowed():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Reshape((3, 2)), keras.layers.Flatten(), keras.layers.Dense(2)])
    axes, _ = unit_axes(_body(model))
    assert [a.size for a in axes] == [6, 6, 2]
    assert axes[1].source == 0 and axes[1].index_map is None


def test_layer_kind():
    assert layer_kind(keras.layers.Dense(2)) == "dense"
    assert layer_kind(keras.layers.Conv2D(2, 3)) == "conv2d"
    with pytest.raises(TypeError, match="Layer 'pool' of class MaxPooling2D has no prunable weights"):
        layer_kind(keras.layers.MaxPooling2D(name="pool"))


# --------------------------------------------------------------------------- effective_keep
def _axes():
    """Input (2) -> conv (3 channels) -> flatten (12 rows, row r copies channel r % 3) -> dense (4) -> out (3)."""
    return [
        UnitAxis(2),
        UnitAxis(3, producer="conv"),
        UnitAxis(12, source=1, index_map=np.arange(12) % 3),
        UnitAxis(4, producer="dense"),
        UnitAxis(3, producer="dense"),
    ]


def _check(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
        assert np.asarray(g).dtype.kind == "i"


def test_effective_keep_all_and_plain_plans():
    _check(effective_keep(_axes(), []), [np.arange(2), np.arange(3), np.arange(12), np.arange(4), np.arange(3)])
    # Unsorted, repeated requests come back sorted and unique; missing trailing entries keep all.
    _check(effective_keep(_axes(), [[1, 0, 1], None, None, [3, 1, 1]]), [[0, 1], np.arange(3), np.arange(12), [1, 3], np.arange(3)])


def test_effective_keep_forward_a_closed_channel_takes_its_rows():
    _check(effective_keep(_axes(), [None, [0, 2]]), [[0, 1], [0, 2], [0, 2, 3, 5, 6, 8, 9, 11], np.arange(4), np.arange(3)])
    # ... and of the rows that survive only the requested ones.
    _check(effective_keep(_axes(), [None, [0, 2], [0, 1, 2, 5, 10]]), [[0, 1], [0, 2], [0, 2, 5], np.arange(4), np.arange(3)])


def test_effective_keep_backward_a_channel_nobody_reads_goes():
    # Rows of channel 1 (1, 4, 7, 10) all dropped by the dense gates: channel 1 goes too.
    rows = [r for r in range(12) if r % 3 != 1]
    _check(effective_keep(_axes(), [None, None, rows]), [[0, 1], [0, 2], rows, np.arange(4), np.arange(3)])


def test_effective_keep_backward_at_any_position():
    """The backward pass visits every axis: here the index-map axis is the fourth of five."""
    axes = [UnitAxis(2), UnitAxis(4, producer="dense"), UnitAxis(3, producer="conv"),
            UnitAxis(6, source=2, index_map=np.arange(6) % 3), UnitAxis(2, producer="dense")]
    _check(effective_keep(axes, [None, None, None, [0, 2, 3, 5]]), [[0, 1], np.arange(4), [0, 2], [0, 2, 3, 5], [0, 1]])


def test_effective_keep_backward_only_prunes_produced_axes():
    axes = _axes()
    axes[1] = UnitAxis(3)  # no producer (e.g. the model input): its units stay
    rows = [r for r in range(12) if r % 3 != 1]
    _check(effective_keep(axes, [None, None, rows]), [[0, 1], np.arange(3), rows, np.arange(4), np.arange(3)])


def test_effective_keep_never_empties_an_axis():
    # Without scores the first candidate stays, with scores the best-scored one.
    _check(effective_keep(_axes(), [None, None, None, []]), [[0, 1], np.arange(3), np.arange(12), [0], np.arange(3)])
    scores = [None, None, None, np.array([0.1, 0.9, 0.3, 0.2])]
    _check(effective_keep(_axes(), [None, None, None, []], scores), [[0, 1], np.arange(3), np.arange(12), [1], np.arange(3)])
    # An axis of one unit: that unit stays.
    one = [UnitAxis(1, producer="dense"), UnitAxis(2, producer="dense")]
    _check(effective_keep(one, [[]]), [[0], [0, 1]])
    # Emptying the rows keeps the best-scored row, and through it its channel only.
    scores = [None, None, np.arange(12) / 12.0]
    _check(effective_keep(_axes(), [None, None, []], scores), [[0, 1], [2], [11], np.arange(4), np.arange(3)])


def test_effective_keep_rejects_out_of_range_and_mixed_axes():
    with pytest.raises(ValueError, match=r"out of range for a unit axis of size 3"):
        effective_keep(_axes(), [None, [0, 3]])
    with pytest.raises(ValueError, match=r"out of range for a unit axis of size 2"):
        effective_keep(_axes(), [[-1]])
    with pytest.raises(ValueError, match=r"^Keep indices \[0 1 2 3 4\]\.\.\. are out of range for a unit axis of size 3\.$"):
        effective_keep(_axes(), [None, [0, 1, 2, 3, 4, 5, 6]])
    mixed = [UnitAxis(6, producer="dense"), UnitAxis(6, source=0, index_map=None), UnitAxis(2, producer="dense")]
    _check(effective_keep(mixed, []), [np.arange(6), np.arange(6), np.arange(2)])
    with pytest.raises(ValueError, match="Unit axis 0 cannot be pruned: the layer after it mixes its units"):
        effective_keep(mixed, [[0, 1]])
