"""Memory accounting: the paper's golden figures (Tables 2-3) and the full footprint."""

import keras
import numpy as np
import pytest

from conftest import make_mlp
from tf_dynhp import memory, to_l0


@pytest.fixture(scope="module")
def paper_mlp():
    return make_mlp(hidden=(300, 100))


def test_dense_mlp_is_1041_kb(paper_mlp):
    # Table 2: "1.041" MB for the 784-300-100-10 MLP (MB = 1000 KB of 1024 bytes).
    assert memory.weight_count(paper_mlp) == 266_610
    assert memory.floats_to_kb(memory.weight_count(paper_mlp)) == pytest.approx(1041.4, rel=1e-3)


def test_mo_of_sp_at_512_is_the_paper_budget(paper_mlp):
    assert memory.mo_kb(paper_mlp, batch_size=512) == pytest.approx(2609.4, abs=0.05)


@pytest.mark.parametrize(
    "batch,mo_kb,training_mb,paper_mb",
    [(512, 2609.4453125, 5218.890625, 5219.0), (128, 1433.4453125, 2866.890625, 2866.0)],
)
def test_sp_training_memory_over_2000_epochs(paper_mlp, batch, mo_kb, training_mb, paper_mb):
    # Table 2 (MNIST, SP batch 512) and Table 3 (Fashion-MNIST, SP batch 128): training
    # memory is the sum of MO over 2000 epochs, "5.219" and "2.866" in units of 1e6 KB
    # (KB of 1024 bytes), i.e. 5219 and 2866 of the paper's MB of 1000 KB (it truncates
    # to 3 digits). Literal numbers, not the module's own constants:
    # MO = 4 * (266 610 + batch * 784) / 1024 KB, exactly representable.
    assert (266_610 + batch * 784) * 4 / 1024 == mo_kb
    assert memory.mo_kb(paper_mlp, batch_size=batch) == mo_kb
    assert memory.training_memory_mb([mo_kb] * 2000) == pytest.approx(training_mb, rel=1e-12)
    assert training_mb == pytest.approx(paper_mb, abs=1.0)  # the paper's figure, truncated


def test_training_memory_unit_is_1000_kb_of_1024_bytes():
    assert memory.training_memory_mb([1000.0]) == 1.0
    assert memory.training_memory_mb([250.0, 500.0, 1250.0]) == 2.0
    assert memory.training_memory_mb([]) == 0.0
    assert memory.floats_to_kb(256) == 1.0  # 256 floats of 4 bytes = 1024 bytes


def test_gate_logits_are_not_in_mo(paper_mlp):
    gated = to_l0(paper_mlp, dataset_size=1)
    assert memory.mo_kb(gated, 512) == memory.mo_kb(paper_mlp, 512)


@pytest.mark.parametrize("budget", [1041.5, 1500.0, 2609.4, 5000.0])
def test_max_batch_for_mo_is_the_largest_that_fits(budget):
    n_w, dim = 266_610, 784
    b = memory.max_batch_for_mo(budget, n_w, dim)
    assert memory.mo_kb_from_counts(n_w, b, dim) <= budget
    assert memory.mo_kb_from_counts(n_w, b + 1, dim) > budget
    assert memory.max_batch_for_mo(2609.4, n_w, dim) == 511  # 2609.4 is rounded down from 2609.43
    assert memory.max_batch_for_mo(1000.0, n_w, dim) == 0


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_memory_full_counts_model_and_optimizer_variables(optimizer):
    model = to_l0(make_mlp(hidden=(16, 8)), dataset_size=1)
    opt = keras.optimizers.get(optimizer)
    opt.build(model.trainable_variables)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    opt_floats = sum(int(np.prod(v.shape)) for v in opt.variables)
    acts = 784 + (2 * 784 + 2 * 16) + (2 * 16 + 2 * 8) + (2 * 8 + 2 * 10)
    expected = memory.floats_to_kb(2 * trainable + opt_floats + 32 * acts)
    assert memory.memory_full_kb(model, 32, opt) == pytest.approx(expected)
    b = memory.max_batch_for_full(expected, model, opt)
    assert b == 32


def test_memory_full_default_assumes_adam():
    model = make_mlp(hidden=(8,))
    opt = keras.optimizers.Adam()
    opt.build(model.trainable_variables)
    assert memory.memory_full_kb(model, 4) == pytest.approx(memory.memory_full_kb(model, 4, opt))


# --------------------------------------------------------------------------- conv models
@pytest.fixture(scope="module")
def lenet5():
    from tf_dynhp.runs import build_lenet5

    return build_lenet5()


def test_lenet5_weights_and_mo(lenet5):
    # 5*5*1*20+20 + 5*5*20*50+50 + 800*500+500 + 500*10+10 conv and dense weights and biases.
    assert memory.weight_count(lenet5) == 520 + 25_050 + 400_500 + 5_010 == 431_080
    assert memory.floats_to_kb(431_080) == pytest.approx(1683.906, abs=1e-3)
    # MO feeds the whole 28x28x1 image: no input features are selected in a conv model.
    assert memory.mo_kb(lenet5, batch_size=512) == pytest.approx((431_080 + 512 * 784) / 256)
    assert memory.mo_kb(to_l0(lenet5, dataset_size=1), 512) == memory.mo_kb(lenet5, 512)


@pytest.mark.parametrize("gated", [False, True])
def test_memory_full_counts_conv_activations(lenet5, gated):
    """Per example: input; per conv pre-activation + output (+ gates and gated pre-activation
    when gated); pooling outputs; dense as before (module docstring of tf_dynhp.memory)."""
    model = to_l0(lenet5, dataset_size=1) if gated else lenet5
    opt = keras.optimizers.Adam()
    opt.build(model.trainable_variables)
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    assert trainable == 431_080 + (20 + 50 + 800 + 500 if gated else 0)
    conv1, conv2 = 24 * 24 * 20, 8 * 8 * 50
    if gated:
        acts = 784 + (3 * conv1 + 20) + 12 * 12 * 20 + (3 * conv2 + 50) + 4 * 4 * 50 + (2 * 800 + 2 * 500) + (2 * 500 + 2 * 10)
        assert acts == 52_314  # the figure in the docstring
    else:
        acts = 784 + 2 * conv1 + 12 * 12 * 20 + 2 * conv2 + 4 * 4 * 50 + 2 * 500 + 2 * 10
    expected = memory.floats_to_kb(2 * trainable + sum(int(np.prod(v.shape)) for v in opt.variables) + 16 * acts)
    assert memory.memory_full_kb(model, 16, opt) == pytest.approx(expected)
    assert memory.max_batch_for_full(expected, model, opt) == 16


# ------------------------------------------------------- arguments the tests above leave at default
def test_weight_count_of_a_list_of_layers():
    model = make_mlp(input_shape=(12,), hidden=(7,), classes=3)
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert memory.weight_count(dense) == 12 * 7 + 7 + 7 * 3 + 3 == 115


def test_explicit_input_dim_overrides_the_models():
    model = make_mlp(input_shape=(12,), hidden=(7,), classes=3)
    assert memory.mo_kb(model, 10) == (115 + 10 * 12) / 256
    assert memory.mo_kb(model, 10, input_dim=5) == (115 + 10 * 5) / 256
    per_example_12 = 12 + (2 * 7) + (2 * 3)  # input, then pre-activation and output per layer
    per_example_5 = 5 + (2 * 7) + (2 * 3)
    fixed = 2 * 115 + (2 * 115 + 2)  # variables + gradients, Adam's two slots + 2 scalars
    assert memory.memory_full_kb(model, 10) == pytest.approx((fixed + 10 * per_example_12) / 256)
    assert memory.memory_full_kb(model, 10, input_dim=5) == pytest.approx((fixed + 10 * per_example_5) / 256)
    budget = (fixed + 10 * per_example_5) / 256
    assert memory.max_batch_for_full(budget, model, input_dim=5) == 10
    assert memory.max_batch_for_full(budget, model) == 10 * per_example_5 // per_example_12


def test_memory_full_unbuilt_or_foreign_optimizer_counts_adam():
    model = make_mlp(input_shape=(12,), hidden=(7,), classes=3)
    default = memory.memory_full_kb(model, 4)
    assert memory.memory_full_kb(model, 4, keras.optimizers.SGD()) == default  # not built yet
    assert memory.memory_full_kb(model, 4, object()) == default  # no `built` attribute


def test_activation_floats_per_example_sums_the_layers():
    assert memory.activation_floats_per_example([(10, 4, True), (4, 3, False)], 10) == 10 + (8 + 20) + 6
    assert memory.activation_floats_per_example([], 7) == 7


def test_select_features_counts_only_inside_a_conv_model():
    """In a dense-first model the gather is the data pipeline's (not counted); after a conv it is a layer's output."""
    from tf_dynhp.layers import SelectFeatures

    dense_first = keras.Sequential([keras.Input((4, 3)), keras.layers.Flatten(), SelectFeatures([0, 2, 5, 7, 11]),
                                    keras.layers.Dense(3, activation="softmax")])
    fixed = 2 * (5 * 3 + 3) + (2 * (5 * 3 + 3) + 2)
    assert memory.memory_full_kb(dense_first, 1) == pytest.approx((fixed + 5 + 2 * 3) / 256)
    conv = keras.Sequential([keras.Input((5, 5, 1)), keras.layers.Conv2D(2, 3, activation="relu"), keras.layers.Flatten(),
                             SelectFeatures([0, 3, 4, 9]), keras.layers.Dense(3, activation="softmax")])
    n_vars = (9 * 2 + 2) + (4 * 3 + 3)
    per_example = 25 + 2 * (3 * 3 * 2) + 4 + 2 * 3  # input, conv pre-activation + output, the gather, dense
    assert memory.memory_full_kb(conv, 1) == pytest.approx((4 * n_vars + 2 + per_example) / 256)


def test_max_batch_for_mo_at_the_edges():
    n_w, dim = 266_610, 784
    exact = memory.mo_kb_from_counts(n_w, 300, dim)  # a budget that holds exactly 300 examples
    assert memory.max_batch_for_mo(exact, n_w, dim) == 300
    assert memory.max_batch_for_mo(memory.floats_to_kb(n_w), n_w, dim) == 0  # the model alone
    assert memory.max_batch_for_mo(memory.floats_to_kb(n_w + dim - 1), n_w, dim) == 0
    assert memory.max_batch_for_mo(memory.floats_to_kb(n_w + dim), n_w, dim) == 1
    assert memory.max_batch_for_mo(1e6, n_w, dim) == (256_000_000 - n_w) // dim  # large budgets: no search


def test_max_batch_for_full_below_the_fixed_part_is_zero():
    model = make_mlp(input_shape=(12,), hidden=(7,), classes=3)
    fixed = memory.memory_full_kb(model, 0)
    assert memory.max_batch_for_full(fixed * 0.99, model) == 0
    assert memory.max_batch_for_full(fixed, model) == 0


def test_layer_activation_floats_counts_a_gather_by_default():
    """Called on its own, a SelectFeatures is a layer of the model (spatial=True by default)."""
    from tf_dynhp.layers import SelectFeatures

    layer = SelectFeatures([0, 2, 3])
    assert memory.layer_activation_floats(layer, (8,), (3,)) == 3
    assert memory.layer_activation_floats(layer, (8,), (3,), spatial=False) == 0


def test_kb_to_floats_is_the_weight_count_a_size_allows():
    assert memory.kb_to_floats(135) == 34560 and memory.kb_to_floats(0.001) == 0
    for n in (0, 1, 34498, 34560, 10**6):  # the inverse of floats_to_kb on whole counts
        assert memory.kb_to_floats(memory.floats_to_kb(n)) == n
