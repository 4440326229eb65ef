"""Scenario builders: splits, class orders, seeds, offline datasets, your own data."""
import numpy as np
import pytest
import torch

from cl.datafiles import DataNotFoundError
from cl.scenarios import from_file, from_folder, from_tensors, split_digits, split_fmnist, split_mnist


def labels(experience):
    return set(experience.dataset.targets)


def test_split_digits_partitions_the_classes():
    s = split_digits(n_experiences=5)
    assert s.n_experiences == 5 and s.n_classes == 10 and s.input_shape == (1, 8, 8)
    assert s.exemplar_bytes == 64
    per_exp = [labels(e) for e in s.benchmark.train_stream]
    assert all(len(c) == 2 for c in per_exp)
    assert set().union(*per_exp) == set(range(10))
    assert [set(c) for c in s.classes_per_experience] == per_exp
    assert [labels(e) for e in s.benchmark.test_stream] == per_exp
    assert sum(s.train_sizes) + sum(s.test_sizes) == 1797
    assert s.train_sizes == tuple(len(e.dataset) for e in s.benchmark.train_stream)


def test_samples_are_x_int_label_task():
    s = split_digits(n_experiences=2)
    x, y, t = s.benchmark.train_stream[0].dataset[0]
    assert x.shape == (1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert isinstance(y, int) and t == 0


def test_class_order_follows_the_scenario_seed_only():
    a, b, c = split_digits(seed=0), split_digits(seed=0), split_digits(seed=1)
    assert a.class_order == b.class_order
    assert a.class_order != c.class_order
    # the data split itself does not move with the seed
    assert sorted(a.test_sizes) != [] and sum(a.test_sizes) == sum(c.test_sizes)
    assert split_digits(shuffle_classes=False).class_order == tuple(range(10))


def test_explicit_class_order_and_uneven_split():
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    s = split_digits(class_order=order, classes_per_experience=[5, 1, 1, 1, 1, 1])
    assert s.class_order == tuple(order)
    assert s.classes_per_experience[0] == (9, 8, 7, 6, 5)
    assert [labels(e) for e in s.benchmark.train_stream][1:] == [{4}, {3}, {2}, {1}, {0}]


@pytest.mark.parametrize("kwargs, message", [
    ({"class_order": [0, 1, 2]}, "permutation of 0..9"),
    ({"n_experiences": 3}, "does not divide"),
    ({"classes_per_experience": [5, 4]}, "sum to 10"),
])
def test_bad_splits_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        split_digits(**kwargs)


def test_task_incremental_variant_labels_experiences():
    s = split_digits(n_experiences=5, task_labels=True)
    assert [e.task_label for e in s.benchmark.train_stream] == [0, 1, 2, 3, 4]
    assert s.benchmark.train_stream[3].dataset[0][2] == 3


def test_train_samples_per_class_subsamples_reproducibly():
    s = split_digits(n_experiences=2, train_samples_per_class=20)
    assert s.train_sizes == (100, 100)
    again = split_digits(n_experiences=2, train_samples_per_class=20)
    x0 = s.benchmark.train_stream[0].dataset[5][0]
    assert torch.equal(x0, again.benchmark.train_stream[0].dataset[5][0])


def test_mnist_and_fmnist_from_the_offline_folder(shared_data):
    for builder in (split_mnist, split_fmnist):
        s = builder(data_root=shared_data, n_experiences=5, train_samples_per_class=30)
        assert s.input_shape == (1, 28, 28) and s.n_classes == 10
        assert sum(s.train_sizes) == 300 and sum(s.test_sizes) == 10_000


def test_missing_data_names_the_expected_files(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        split_mnist(data_root=tmp_path / "empty")
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert isinstance(err.value, FileNotFoundError)


def test_data_root_from_environment(shared_data, monkeypatch):
    monkeypatch.setenv("CLSUITE_DATA_ROOT", str(shared_data))
    assert split_fmnist(n_experiences=2, train_samples_per_class=5).n_classes == 10


def _arrays(n_classes=4, per_class=6, shape=(1, 6, 6)):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(n_classes), per_class)
    return rng.random((len(y), *shape), dtype=np.float32), y


def test_from_tensors_and_from_file_round_trip(tmp_path):
    x, y = _arrays()
    s = from_tensors(x, y, x, y, n_experiences=2, shuffle_classes=False)
    assert s.classes_per_experience == ((0, 1), (2, 3)) and s.input_shape == (1, 6, 6)
    flat = from_tensors(x.reshape(len(x), -1), y, x.reshape(len(x), -1), y, n_experiences=4)
    assert flat.input_shape == (1, 1, 36)

    path = tmp_path / "mine.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=y)
    loaded = from_file(path=path, n_experiences=2, shuffle_classes=False)
    assert loaded.name == "mine" and loaded.train_sizes == (12, 12)
    torch.save({"x_train": torch.from_numpy(x), "y_train": torch.from_numpy(y),
                "x_test": torch.from_numpy(x), "y_test": torch.from_numpy(y)}, tmp_path / "mine.pt")
    assert from_file(path=tmp_path / "mine.pt", n_experiences=4).n_experiences == 4


def test_from_tensors_rejects_labels_that_are_not_0_to_c():
    x, y = _arrays()
    with pytest.raises(ValueError, match="0..C-1"):
        from_tensors(x, y + 1, x, y + 1, n_experiences=2)


def test_from_folder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls, colour in (("cat", 40), ("dog", 200)):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (10, 12), (colour, i, 0)).save(folder / f"{i}.png")
    s = from_folder(train_dir=tmp_path / "train", test_dir=tmp_path / "test", image_size=8,
                    n_experiences=2, shuffle_classes=False)
    assert s.input_shape == (3, 8, 8) and s.train_sizes == (3, 3)
    x = s.benchmark.train_stream[1].dataset[0][0]
    assert float(x[0].mean()) == pytest.approx(200 / 255, abs=0.01)   # class 1 = "dog"


def test_train_transform_augments_train_samples_only():
    from torchvision.transforms import v2

    x, y = _arrays(shape=(3, 8, 8))
    s = from_tensors(x, y, x, y, n_experiences=2, train_transform=v2.RandomCrop(8, padding=4))
    train, test = s.benchmark.train_stream[0].dataset, s.benchmark.test_stream[0].dataset
    draws = [train[0][0] for _ in range(10)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    assert torch.equal(test[0][0], test[0][0])
    # Avalanche switches to the eval group for evaluation: no augmentation there
    evaluated = train.eval()
    assert torch.equal(evaluated[0][0], evaluated[0][0])


def test_rare_class_stream_cuts_only_the_rare_classes_training_samples():
    from cl.runner import build_scenario
    from cl.config import RunConfig

    def scenario(section):
        return RunConfig.from_dict({"scenario": section, "model": "mlp", "strategy": "naive"}).scenario

    full = scenario({"name": "split_digits", "n_experiences": 5})
    rare = scenario({"name": "rare_class_stream", "n_experiences": 5, "rare_classes": [3, 7], "rare_fraction": 0.05})

    def counts(stream):
        out = {}
        for experience in stream:
            for target in experience.dataset.targets:
                out[int(target)] = out.get(int(target), 0) + 1
        return out

    a, b = build_scenario(full), build_scenario(rare)
    train_full, train_rare = counts(a.benchmark.train_stream), counts(b.benchmark.train_stream)
    for c in range(10):
        if c in (3, 7):
            assert train_rare[c] == max(1, round(0.05 * train_full[c]))
        else:
            assert train_rare[c] == train_full[c]
    assert counts(b.benchmark.test_stream) == counts(a.benchmark.test_stream)     # tests stay whole


def test_rare_class_stream_rejects_unknown_classes():
    import pytest

    from cl.runner import build_scenario
    from cl.config import RunConfig

    cfg = RunConfig.from_dict({"scenario": {"name": "rare_class_stream", "rare_classes": [12]}, "model": "mlp",
                               "strategy": "naive"})
    with pytest.raises(ValueError, match=r"scenario.rare_classes: \[12\]"):
        build_scenario(cfg.scenario)
