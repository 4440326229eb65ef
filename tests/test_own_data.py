"""Your own image arrays read right (layout, dtype, labels, normalisation) and training-minibatch augmentation."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient

from cl.arrays import V2_REFUSED, V2_TRANSFORMS, check_arrays, resolve_layout
from cl.config import RunConfig, load_run_config
from cl.errors import ConfigError
from cl.scenarios import from_file, from_folder, from_tensors

ROOT = Path(__file__).resolve().parents[1]


def clsuite(*args, cwd, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cl.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def images(shape, n_classes=4, per_class=4, dtype=np.uint8, seed=0):
    """Random images of `shape` per sample, labels 0..n_classes-1 in equal numbers."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), per_class)
    x = rng.integers(0, 256, (len(y), *shape)).astype(dtype) if dtype == np.uint8 else \
        rng.random((len(y), *shape)).astype(dtype)
    return x, y


def write_run(tmp_path, scenario: dict, model=None, **extra) -> Path:
    cfg = {"experiment": "own", "scenario": scenario, "model": model or {"name": "mlp", "hidden": [16]},
           "strategy": {"name": "naive"}, "train": {"epochs": 1, "batch_size": 8}, **extra}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------------------------ the two cases


def test_channels_last_uint8_cifar_shaped_file_trains_as_3_channel_images(tmp_path):
    """Issue #27's repro: (N, 32, 32, 3) uint8 + resnet32 used to build a 32-channel model on 0..255 pixels."""
    from cl.models import build_resnet32, count_parameters

    x, y = images((32, 32, 3), n_classes=4, per_class=3)
    np.savez(tmp_path / "cifarish.npz", x_train=x, y_train=y, x_test=x[::3], y_test=y[::3])
    config = write_run(tmp_path, {"name": "from_tensors", "path": str(tmp_path / "cifarish.npz"), "n_experiences": 2},
                       model={"name": "resnet32"})
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = clsuite("run", config, "--tracking-uri", store, cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    [run] = MlflowClient(store).search_runs([MlflowClient(store).get_experiment_by_name("own").experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["data.layout"] == "nhwc" and params["data.dtype"] == "uint8"
    assert params["data.input_shape"] == "(3, 32, 32)" and params["data.scaled_to_unit"] == "true"
    assert params["data.normalize"] == "none" and params["data.augment"] == "none"
    three_channel = count_parameters(build_resnet32(input_shape=(3, 32, 32), n_classes=4))
    assert run.data.metrics["memory/model_bytes"] == 4 * three_channel     # the model has 3 input channels
    assert three_channel != count_parameters(build_resnet32(input_shape=(32, 32, 3), n_classes=4))


def test_ambiguous_shape_exits_2_naming_layout_and_nothing_is_logged(tmp_path):
    # (N, 3, 8, 3): three 8×3 channels, or 3×8 images with three channels? Only the user knows.
    x, y = images((3, 8, 3))
    np.savez(tmp_path / "ambiguous.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    config = write_run(tmp_path, {"name": "from_tensors", "path": str(tmp_path / "ambiguous.npz"), "n_experiences": 2})
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = clsuite("run", config, "--tracking-uri", store, cwd=tmp_path)
    assert out.returncode == 2, out.stderr + out.stdout
    message = " ".join(out.stderr.split())
    print(message)   # the message as printed (quoted in the closing note)
    assert "scenario.layout" in message and "(16, 3, 8, 3)" in message
    assert "scenario.layout: nhwc" in message and "Traceback" not in out.stderr
    exp = MlflowClient(store).get_experiment_by_name("own")
    assert exp is None or not MlflowClient(store).search_runs([exp.experiment_id])


# ------------------------------------------------------------------------------------ layout and dtype


@pytest.mark.parametrize("shape, layout", [
    ((3, 32, 32), "nchw"), ((32, 32, 3), "nhwc"), ((1, 28, 28), "nchw"), ((28, 28, 1), "nhwc"),
    ((4, 16, 16), "nchw"), ((16, 16, 4), "nhwc"),
])
def test_auto_layout_decides_when_one_side_is_a_channel_axis(shape, layout):
    assert resolve_layout((10, *shape), "auto") == layout


@pytest.mark.parametrize("shape", [(3, 8, 3), (4, 4, 4), (1, 4, 4), (10, 32, 32), (32, 32, 32)])
def test_auto_layout_refuses_to_guess(shape):
    with pytest.raises(ConfigError, match=r"scenario\.layout: cannot tell .*Set `scenario.layout: nchw`"):
        resolve_layout((10, *shape), "auto")
    assert resolve_layout((10, *shape), "nhwc") == "nhwc"      # an explicit layout is taken as given


def test_nhwc_uint8_reads_as_the_same_images_as_nchw_float():
    x, y = images((8, 8, 3))
    a = from_tensors(x, y, x, y, n_experiences=2, shuffle_classes=False)
    b = from_tensors(np.transpose(x, (0, 3, 1, 2)).astype(np.float32) / 255, y,
                     np.transpose(x, (0, 3, 1, 2)).astype(np.float32) / 255, y, n_experiences=2,
                     shuffle_classes=False)
    assert a.input_shape == b.input_shape == (3, 8, 8)
    xa, xb = a.benchmark.train_stream[0].dataset[0][0], b.benchmark.train_stream[0].dataset[0][0]
    assert torch.allclose(xa, xb) and float(xa.max()) <= 1.0
    assert a.data["layout"] == "nhwc" and a.data["dtype"] == "uint8" and a.data["scaled_to_unit"] == "true"
    assert b.data["layout"] == "nchw" and b.data["dtype"] == "float32" and b.data["scaled_to_unit"] == "false"


def test_torch_file_in_channels_last_layout(tmp_path):
    x, y = images((6, 6, 3))
    torch.save({"x_train": torch.from_numpy(x), "y_train": torch.from_numpy(y),
                "x_test": torch.from_numpy(x), "y_test": torch.from_numpy(y)}, tmp_path / "mine.pt")
    s = from_file(path=tmp_path / "mine.pt", n_experiences=2)
    assert s.input_shape == (3, 6, 6) and s.data["layout"] == "nhwc"


def _bad(**changes):
    x, y = images((3, 8, 8))
    arrays = {"x_train": x, "y_train": y, "x_test": x, "y_test": y}
    arrays.update(changes)
    return arrays


def _nan():
    x = images((3, 8, 8), dtype=np.float32)[0]
    x[2, 1, 3, 3] = np.nan
    return x


@pytest.mark.parametrize("arrays, message", [
    (_bad(x_train=images((8, 8))[0]), r"3-D arrays have no channel axis.*x\[:, None\]"),
    (_bad(y_train=images((3, 8, 8))[1][:-1]), "y_train has 15 labels but x_train has 16 samples"),
    (_bad(x_train=_nan()), "x_train holds 1 NaN or infinite values"),
    (_bad(x_test=images((3, 8, 8), n_classes=2, per_class=8)[0], y_test=images((3, 8, 8), n_classes=2, per_class=8)[1]),
     r"y_test lacks training classes \[2, 3\]"),
    (_bad(y_test=images((3, 8, 8))[1] + 1), r"y_test has classes \[4\] that y_train lacks"),
    (_bad(y_train=images((3, 8, 8))[1] + 1, y_test=images((3, 8, 8))[1] + 1), r"0\.\.C-1.*lacking \[0\]"),
    (_bad(y_train=np.eye(4)[images((3, 8, 8))[1]]), "one-hot"),
    (_bad(y_train=images((3, 8, 8))[1].astype(np.float32)), "labels must be integers"),
    (_bad(x_train=images((3, 8, 8))[0].astype(np.int64)), r"dtype int64.*astype\(np.uint8\)"),
    (_bad(x_test=images((3, 8, 8), dtype=np.float32)[0]), "give both as uint8 or both as float"),
    (_bad(x_test=images((3, 6, 6))[0]), r"x_train samples have shape \(3, 8, 8\) but x_test samples \(3, 6, 6\)"),
])
def test_garbage_is_refused_with_a_message_naming_the_fix(arrays, message):
    with pytest.raises(ConfigError, match=message):
        check_arrays(*arrays.values())


def test_file_problems_exit_2_at_preflight_before_any_run(tmp_path):
    x, y = images((3, 8, 8))
    np.savez(tmp_path / "few.npz", x_train=x, y_train=y, x_test=x[y < 2], y_test=y[y < 2])
    cfg = RunConfig.from_dict({"scenario": {"name": "from_tensors", "path": str(tmp_path / "few.npz")},
                               "model": "mlp", "strategy": "naive"})
    with pytest.raises(ConfigError, match=r"y_test lacks training classes \[2, 3\].*few\.npz"):
        cfg.preflight()
    np.savez(tmp_path / "bad_layout.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    cfg = RunConfig.from_dict({"scenario": {"name": "from_tensors", "path": str(tmp_path / "bad_layout.npz"),
                                            "layout": "nhwc", "normalize": {"mean": [0.5, 0.5, 0.5], "std": [1, 1, 1]}},
                               "model": "mlp", "strategy": "naive"})
    with pytest.raises(ConfigError, match=r"3 mean/std values for 8 channels"):   # read as nhwc: 8 channels
        cfg.preflight()


def test_vectors_stay_vectors_and_refuse_layout_and_augment():
    x, y = np.random.default_rng(0).random((16, 5)).astype(np.float32), np.repeat(np.arange(4), 4)
    assert from_tensors(x, y, x, y, n_experiences=2).data["layout"] == "vector"
    with pytest.raises(ConfigError, match="scenario.layout: 'nhwc' applies to 4-D image arrays"):
        from_tensors(x, y, x, y, n_experiences=2, layout="nhwc")
    with pytest.raises(ConfigError, match="scenario.augment: applies to images"):
        from_tensors(x, y, x, y, n_experiences=2, augment="crop_flip")


# ------------------------------------------------------------------------------------ normalisation


def test_per_channel_statistics_come_from_the_training_split_only():
    x, y = images((3, 8, 8), dtype=np.float32)
    x_test = x * 0.5 + 0.25                   # other statistics: must not leak into the normalisation
    s = from_tensors(x, y, x_test, y, n_experiences=1, normalize="per_channel", shuffle_classes=False)
    train = torch.stack([s.benchmark.train_stream[0].dataset[i][0] for i in range(16)])
    test = torch.stack([s.benchmark.test_stream[0].dataset[i][0] for i in range(16)])
    assert torch.allclose(train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(train.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4)
    mean, std = (torch.from_numpy(v).view(1, 3, 1, 1) for v in (x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3), ddof=1)))
    # same labels, same sample order in both streams: test = (0.5 x + 0.25 − mean_train) / std_train
    assert torch.allclose(test, 0.5 * train + (0.25 - 0.5 * mean) / std, atol=1e-4)
    assert s.data["normalize"].startswith("per_channel mean=[")


def test_given_mean_std_and_a_constant_channel():
    x, y = images((3, 4, 4))
    s = from_tensors(x, y, x, y, n_experiences=1, normalize={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
                     shuffle_classes=False, layout="nchw")
    expected = (torch.from_numpy(x).float() / 255 - 0.5) / 0.25
    for i in range(len(y)):     # every sample is its raw image scaled and normalised (streams reorder samples)
        sample = s.benchmark.train_stream[0].dataset[i][0]
        assert any(torch.allclose(sample, e, atol=1e-6) for e in expected)
    flat = images((3, 4, 4), dtype=np.float32)[0]
    flat[:, 1] = 0.5
    with pytest.raises(ConfigError, match=r"channel\(s\) \[1\] are constant"):
        from_tensors(flat, y, flat, y, n_experiences=1, normalize="per_channel", layout="nchw")


# ------------------------------------------------------------------------------------ config and hashes


def test_new_options_leave_published_hashes_and_spelled_out_defaults_alone():
    """New fields at their neutral defaults are not part of the resolved config (old hashes hold)."""
    from cl.grid import expand, load_grid

    first = {path: expand(load_grid(ROOT / "experiments" / path))[0].config_hash
             for path in ("fpf_seq_cifar10.yaml", "memo_cifar100_b0_inc10.yaml", "quickstart.yaml")}
    assert first == {"fpf_seq_cifar10.yaml": "be9e126befad1b37", "memo_cifar100_b0_inc10.yaml": "d16592aae03e09b2",
                     "quickstart.yaml": "55ac3f500dbd6878"}            # computed before augment/layout existed

    def cfg(**scenario):
        return RunConfig.from_dict({"scenario": scenario, "model": "mlp", "strategy": "naive"})

    assert cfg(name="split_digits").config_hash == cfg(name="split_digits", augment="none").config_hash
    assert cfg(name="split_digits").config_hash != cfg(name="split_digits", augment="crop_flip").config_hash
    assert (cfg(name="from_tensors", path="a.npz").config_hash
            == cfg(name="from_tensors", path="a.npz", layout="auto", normalize="none", augment=False).config_hash)
    cifar = cfg(name="split_cifar10")
    assert cifar.scenario.options["augment"] is True          # CIFAR's published spelling of crop_flip
    assert cifar.config_hash == cfg(name="split_cifar10", augment="crop_flip").config_hash
    assert cfg(name="split_cifar10", augment="none").config_hash == cfg(name="split_cifar10", augment=False).config_hash


def test_augment_names_are_checked_at_config_time_without_torch(tmp_path):
    good = {"name": "g", "experiment": "g", "base": {
        "scenario": {"name": "split_digits", "augment": [{"name": "RandomCrop", "size": 8, "padding": 2},
                                                         {"name": "RandomRotation", "degrees": 15}]},
        "model": {"name": "mlp"}, "strategy": {"name": "naive"}}, "seeds": [0]}
    bad = {**good, "base": {**good["base"], "scenario": {"name": "from_folder", "train_dir": "a", "test_dir": "b",
                                                        "augment": [{"name": "RandomFlop"}]}}}
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    code = ("import sys; from cl.cli import app; from typer.testing import CliRunner; "
            f"ok = CliRunner().invoke(app, ['grid', 'expand', {str(tmp_path / 'good.yaml')!r}]); "
            f"bad = CliRunner().invoke(app, ['grid', 'expand', {str(tmp_path / 'bad.yaml')!r}]); "
            "print('CODES', ok.exit_code, bad.exit_code); print(bad.output); "
            "print('HEAVY', [m for m in ('torch', 'torchvision', 'avalanche') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "CODES 0 2" in out.stdout and "HEAVY []" in out.stdout
    assert "unknown transform 'RandomFlop'" in " ".join(out.stdout.split())


def test_transform_arguments_are_checked_at_preflight(tmp_path):
    cfg = RunConfig.from_dict({"scenario": {"name": "split_digits", "augment": [{"name": "RandomCrop", "sise": 8}]},
                               "model": "mlp", "strategy": "naive"})
    with pytest.raises(ConfigError, match=r"scenario.augment entry 0 \(RandomCrop\): TypeError.*sise"):
        cfg.preflight()
    with pytest.raises(ConfigError, match="cannot be used here: normalisation is `scenario.normalize`"):
        RunConfig.from_dict({"scenario": {"name": "split_digits", "augment": ["Normalize"]},
                             "model": "mlp", "strategy": "naive"})


def test_static_transform_list_matches_torchvision():
    """Every v2 transform class is either usable in `augment:` or refused with a reason (update the lists)."""
    from torchvision.transforms import v2

    classes = {n for n, o in vars(v2).items() if isinstance(o, type) and issubclass(o, v2.Transform)
               and n != "Transform"}
    assert set(V2_TRANSFORMS) <= classes and set(V2_REFUSED) <= classes
    assert not set(V2_TRANSFORMS) & set(V2_REFUSED)
    assert classes - set(V2_TRANSFORMS) - set(V2_REFUSED) == set(), "new torchvision transforms: list or refuse them"


# ------------------------------------------------------------------------------------ batched augmentation


def _padded_crops(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    c, h, w = image.shape
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    return [padded[:, i:i + h, j:j + w] for i in range(2 * padding + 1) for j in range(2 * padding + 1)]


def test_batched_crop_flip_draws_per_sample_parameters_like_torchvision():
    from cl.augment import BatchAugment

    torch.manual_seed(0)
    image = torch.rand(3, 8, 8)
    batch = image.expand(64, 3, 8, 8).contiguous()
    out = BatchAugment("crop_flip")(batch)
    assert out.shape == batch.shape
    candidates = _padded_crops(image, 4)
    candidates += [c.flip(-1) for c in candidates]
    matches = [next(k for k, c in enumerate(candidates) if torch.equal(o, c)) for o in out]  # each a real crop(/flip)
    assert len(set(matches)) > 20                     # offsets and flips differ between samples of one batch
    assert any(k >= 81 for k in matches) and any(k < 81 for k in matches)


def test_brightness_jitter_is_per_sample_and_clamped():
    from cl.arrays import PRESET_BRIGHTNESS
    from cl.augment import _brightness

    torch.manual_seed(0)
    x = torch.full((256, 1, 2, 2), 0.9)
    out = _brightness(x, 1 - PRESET_BRIGHTNESS, 1 + PRESET_BRIGHTNESS)
    factors = out[:, 0, 0, 0] / 0.9
    assert float(out.max()) == 1.0 and float(factors.min()) >= 1 - PRESET_BRIGHTNESS - 1e-6
    assert len(torch.unique(out)) > 100


def test_augmentation_acts_on_pixels_before_normalisation():
    from cl.augment import BatchAugment

    torch.manual_seed(0)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.2, 0.2]
    raw = torch.ones(32, 3, 8, 8)
    normalised = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = BatchAugment("crop_flip", mean=mean, std=std)(normalised)
    pad_value = (0 - torch.tensor(mean)) / torch.tensor(std)        # black before normalisation
    values = {round(float(v), 4) for v in out[:, 0].flatten()}
    assert values == {round(float(pad_value[0]), 4), round(float(normalised[0, 0, 0, 0]), 4)}


def test_user_lists_run_batched_where_possible_and_per_sample_otherwise():
    from cl.augment import BatchAugment

    batched = BatchAugment([{"name": "RandomCrop", "size": 8, "padding": 2}, {"name": "RandomHorizontalFlip"},
                            {"name": "ColorJitter", "brightness": 0.2}])
    assert batched.per_sample_steps == 0
    mixed = BatchAugment([{"name": "RandomCrop", "size": 8, "padding": 2}, {"name": "RandomRotation", "degrees": 40}])
    assert mixed.per_sample_steps == 1
    torch.manual_seed(0)
    image = torch.rand(1, 8, 8)
    out = BatchAugment([{"name": "RandomRotation", "degrees": 40}])(image.expand(16, 1, 8, 8))
    assert len({tuple(o.flatten().tolist()) for o in out}) > 8     # each sample its own angle
    with pytest.raises(ConfigError, match=r"turns samples of shape \(1, 8, 8\).*into \(1, 4, 4\)"):
        BatchAugment([{"name": "Resize", "size": 4}]).check(image.expand(2, 1, 8, 8))


# ------------------------------------------------------------------------------------ in training


class _Spy:
    """Records the inputs the strategy trains on (after DER's buffer concatenation) and what stays after the update."""

    def __init__(self):
        self.forward, self.kept = [], []

    def after_forward(self, strategy, **kwargs):
        self.forward.append((strategy.clock.train_exp_counter, strategy.mb_x.detach().clone()))

    def after_training_iteration(self, strategy, **kwargs):
        self.kept.append(strategy.mb_x.detach().clone())


@pytest.mark.parametrize("strategy_name", ["Replay", "DER"])
def test_plugin_augments_new_and_replayed_samples(strategy_name, one_thread):
    """A deterministic augmentation (vertical flip, p=1) makes every trained-on image recognisable."""
    from avalanche import training

    from cl.augment import AugmentPlugin, BatchAugment
    from cl.models import build_mlp
    from cl.runner import _quiet_avalanche, _silent_evaluator

    x, y = images((1, 6, 6), n_classes=4, per_class=12, dtype=np.float32)
    s = from_tensors(x, y, x, y, n_experiences=2, shuffle_classes=False, layout="nchw")
    raw = {tuple(v.flatten().tolist()) for v in torch.from_numpy(x)}
    torch.manual_seed(0)
    model = build_mlp(input_shape=(1, 6, 6), n_classes=4, hidden=[8])
    spy = _Spy()
    kwargs = dict(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  criterion=torch.nn.CrossEntropyLoss(), mem_size=8, train_mb_size=6, train_epochs=1,
                  evaluator=_silent_evaluator(),
                  plugins=[AugmentPlugin(BatchAugment([{"name": "RandomVerticalFlip", "p": 1.0}])), spy])
    if strategy_name == "DER":
        kwargs["batch_size_mem"] = 4
    strategy = getattr(training, strategy_name)(**kwargs)
    with _quiet_avalanche():       # drops only Avalanche's known deprecation notice
        for experience in s.benchmark.train_stream:
            strategy.train(experience, num_workers=0)
    label_of = {tuple(v.flip(-2).flatten().tolist()): int(c) for v, c in zip(torch.from_numpy(x), y)}
    seen = [(exp, tuple(v.flatten().tolist())) for exp, batch in spy.forward for v in batch]
    assert seen and all(v in label_of for _, v in seen), "a trained-on image was not augmented"
    replayed = {label_of[v] for exp, v in seen if exp == 1} & {0, 1}     # experience 0 held classes 0 and 1
    assert replayed, "no replayed sample in the second experience's batches"
    if strategy_name == "Replay":   # the un-augmented inputs are back for whoever stores samples after the update
        assert all(tuple(v.flatten().tolist()) in raw for batch in spy.kept for v in batch)


def test_augmented_run_end_to_end_logs_how_it_read_the_data(fresh_store, one_thread):
    from cl.runner import run

    cfg = RunConfig.from_dict({
        "experiment": "augmented",
        "scenario": {"name": "split_digits", "n_experiences": 2, "classes_per_experience": [5, 5],
                     "train_samples_per_class": 10, "augment": "crop_flip_jitter"},
        "model": {"name": "cnn", "channels": [4], "hidden": 8}, "strategy": {"name": "replay", "mem_size": 20},
        "train": {"epochs": 1, "batch_size": 16}})
    result = run(cfg, tracking_uri=fresh_store)
    assert result.ok, result.reason
    params = MlflowClient(fresh_store).get_run(result.run_id).data.params
    assert params["data.augment"] == "crop_flip_jitter" and params["scenario.augment"] == "crop_flip_jitter"
    assert params["data.layout"] == "nchw" and params["data.input_shape"] == "(1, 8, 8)"


def test_published_run_config_file_still_loads(tmp_path):
    """The YAML a run writes (config.yaml) loads back to the same hash, augment list included."""
    cfg = RunConfig.from_dict({"scenario": {"name": "split_mnist", "augment": [{"name": "RandomCrop", "size": 28,
                                                                                "padding": 2}]},
                               "model": "mlp", "strategy": "naive"})
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert load_run_config(tmp_path / "c.yaml").config_hash == cfg.config_hash


def test_from_folder_takes_normalize_and_augment(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls, colour in (("cat", 40), ("dog", 200)):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (10, 12), (colour, i * 40, 0)).save(folder / f"{i}.png")
    s = from_folder(train_dir=tmp_path / "train", test_dir=tmp_path / "test", image_size=4, n_experiences=2,
                    normalize={"mean": [0.5], "std": [0.5]}, augment="crop_flip")
    assert s.input_shape == (3, 4, 4) and s.data["layout"] == "nchw"      # (N, 3, 4, 4) is no guess: we wrote it
    assert s.data["normalize"] == "given mean=[0.5, 0.5, 0.5] std=[0.5, 0.5, 0.5]"
    assert [type(p).__name__ for p in s.train_plugins()] == ["AugmentPlugin"]
    assert from_folder(train_dir=tmp_path / "train", test_dir=tmp_path / "test", image_size=4,
                       n_experiences=2).train_plugins() == []


def test_folder_whose_test_split_lacks_a_class_exits_2_at_preflight(tmp_path):
    for split, classes in (("train", ("cat", "dog", "eel")), ("test", ("cat", "dog"))):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
    cfg = RunConfig.from_dict({"scenario": {"name": "from_folder", "train_dir": str(tmp_path / "train"),
                                            "test_dir": str(tmp_path / "test")}, "model": "mlp", "strategy": "naive"})
    with pytest.raises(ConfigError, match=r"scenario.test_dir: .*test lacks \['eel'\]"):
        cfg.preflight()


def test_split_cifar_reads_channels_last_uint8_normalises_and_augments_by_default(tmp_path, monkeypatch):
    """CIFAR's files are not here; a stand-in for torchvision's class checks the wiring (layout, stats, augment)."""
    import torchvision

    from cl.datafiles import DATASETS
    from cl.scenarios import CIFAR_STATS, split_cifar10

    folder = tmp_path / DATASETS["cifar10"].folder
    folder.mkdir(parents=True)
    for name in DATASETS["cifar10"].files:
        (folder / name).touch()

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            self.data, targets = images((32, 32, 3), n_classes=10, per_class=3 if train else 1, seed=int(train))
            self.targets = targets.tolist()

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    s = split_cifar10(data_root=tmp_path, n_experiences=5)
    assert s.input_shape == (3, 32, 32) and s.data["layout"] == "nhwc" and s.data["dtype"] == "uint8"
    assert s.data["augment"] == "crop_flip" and s.augment is not None and s.augment.active
    mean, std = CIFAR_STATS["cifar10"]
    raw = FakeCIFAR10(None, True, False).data
    expected = (torch.from_numpy(raw).permute(0, 3, 1, 2).float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) \
        / torch.tensor(std).view(1, 3, 1, 1)
    sample = s.benchmark.train_stream[0].dataset[0][0]
    assert any(torch.allclose(sample, e, atol=1e-5) for e in expected)
    assert split_cifar10(data_root=tmp_path, n_experiences=5, augment=False).augment is None
