"""Metrics against hand-computed matrices (expected values worked out in the comments)."""
import numpy as np
import pytest

from cl import metrics

# R[t, j]: accuracy on experience j after training t
R = np.array([
    [0.9, 0.0, 0.0],
    [0.6, 0.8, 0.0],
    [0.5, 0.7, 0.9],
])


def test_average_accuracy_is_the_final_row_mean():
    # (0.5 + 0.7 + 0.9) / 3 = 0.7
    assert metrics.average_accuracy(R) == pytest.approx(0.7)
    # weights 100, 100, 200: (50 + 70 + 180) / 400 = 0.75
    assert metrics.average_accuracy(R, weights=[100, 100, 200]) == pytest.approx(0.75)


def test_seen_and_average_incremental_accuracy():
    # seen after t=0: 0.9; t=1: (0.6 + 0.8)/2 = 0.7; t=2: 0.7  -> mean 2.3/3
    assert metrics.seen_accuracy(R, 1) == pytest.approx(0.7)
    assert metrics.average_incremental_accuracy(R) == pytest.approx(2.3 / 3)
    # weighted (1, 3, 1): t=1: (0.6 + 2.4)/4 = 0.75; t=2: (0.5 + 2.1 + 0.9)/5 = 0.7 -> (0.9+0.75+0.7)/3
    assert metrics.average_incremental_accuracy(R, weights=[1, 3, 1]) == pytest.approx(2.35 / 3)


def test_forgetting_is_max_based():
    # j=0: max(0.9, 0.6) - 0.5 = 0.4;  j=1: max(0.0, 0.8) - 0.7 = 0.1  -> mean 0.25
    assert metrics.forgetting_per_experience(R) == pytest.approx([0.4, 0.1])
    assert metrics.forgetting(R) == pytest.approx(0.25)


def test_forgetting_uses_the_best_accuracy_not_the_one_right_after_learning():
    # accuracy on exp 0 rises after exp 1 (0.6 -> 0.9) then falls to 0.7
    R2 = np.array([[0.6, 0.0, 0.0], [0.9, 0.8, 0.0], [0.7, 0.8, 0.9]])
    # Chaudhry: j=0: 0.9 - 0.7 = 0.2; j=1: 0.8 - 0.8 = 0 -> 0.1
    assert metrics.forgetting(R2) == pytest.approx(0.1)
    # Avalanche-style R[j,j] - R[T-1,j] would give j=0: 0.6 - 0.7 = -0.1 -> mean -0.05; BWT is that, negated
    assert metrics.backward_transfer(R2) == pytest.approx(0.05)


def test_backward_transfer():
    # j=0: 0.5 - 0.9 = -0.4; j=1: 0.7 - 0.8 = -0.1 -> -0.25
    assert metrics.backward_transfer(R) == pytest.approx(-0.25)


def test_single_experience():
    one = np.array([[0.8]])
    assert metrics.average_accuracy(one) == pytest.approx(0.8)
    assert metrics.average_incremental_accuracy(one) == pytest.approx(0.8)
    assert metrics.forgetting(one) == 0.0
    assert metrics.backward_transfer(one) == 0.0


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3)), "square"),
    (np.zeros(3), "square"),
    (np.array([[0.5, np.nan], [0.5, 0.5]]), "NaN"),
])
def test_bad_matrices_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        metrics.forgetting(bad)


def test_bad_weights_are_rejected():
    with pytest.raises(ValueError, match="weights"):
        metrics.average_accuracy(R, weights=[1, 2])
    with pytest.raises(ValueError, match="t must be"):
        metrics.seen_accuracy(R, 3)


def test_memory_accounting_reproduces_memos_title():
    # ResNet-32: 463,504 params x 4 bytes = 1,854,016 bytes = 603 CIFAR images of 32*32*3 bytes
    model = metrics.model_bytes(463_504)
    assert model == 1_854_016
    assert model // metrics.exemplar_bytes(1, (3, 32, 32)) == 603
    footprint = metrics.memory_footprint(463_504, 2000, (3, 32, 32))
    assert footprint.exemplar_bytes == 2000 * 3072
    assert footprint.total_mb == pytest.approx((1_854_016 + 6_144_000) / 2**20)


def test_memory_alignment_reproduces_memos_worked_example():
    # CIFAR-100 B0 Inc10: DER ends with 10 ResNet-32 backbones and keeps 2,000 exemplars
    der, memo, single = 10 * 463_504, 112_016 + 10 * 351_488, 463_504
    assert (der, memo) == (4_635_040, 3_626_896)
    assert metrics.aligned_exemplars(der, der, 2000, (3, 32, 32)) == 2000
    assert metrics.aligned_exemplars(der, memo, 2000, (3, 32, 32)) == 3312
    assert metrics.aligned_exemplars(der, single, 2000, (3, 32, 32)) == 7431
    # ... and the budget is the paper's 23.5 MB
    assert metrics.memory_footprint(der, 2000, (3, 32, 32)).total_mb == pytest.approx(23.54, abs=0.01)
    with pytest.raises(ValueError, match="larger than the reference"):
        metrics.aligned_exemplars(single, der, 2000, (3, 32, 32))


def test_class_subset_accuracy_weights_by_test_samples_and_skips_absent_classes():
    import pytest

    from cl.metrics import class_subset_accuracy

    accuracy, counts = [1.0, 0.0, 0.5, float("nan")], [30, 10, 20, 0]
    assert class_subset_accuracy(accuracy, counts, [0, 1]) == pytest.approx(0.75)
    assert class_subset_accuracy(accuracy, counts, [2, 3]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no test samples"):
        class_subset_accuracy(accuracy, counts, [3])


def test_accuracy_when_learnt_reads_each_class_at_the_experience_that_taught_it():
    import pytest

    from cl.metrics import accuracy_when_learnt

    # classes 0, 1 taught first, 2 second; class 0 then forgotten
    C = np.array([[0.9, 0.8, np.nan], [0.1, 0.7, 0.6]])
    counts = [10, 10, 20]
    assert accuracy_when_learnt(C, counts, [0, 2], [[0, 1], [2]]) == pytest.approx((0.9 * 10 + 0.6 * 20) / 30)
