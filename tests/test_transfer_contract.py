"""The contract every registered transfer experiment passes, and how transfer configs validate.

The check itself is public, `cl.testing.check_transfer`: each experiment runs with its registry entry's
smoke options (seconds, offline data) through the real runner into a real MLflow store: FINISHED, finite
final metrics, provenance, the logged config round-trips to the same hash. An experiment whose smoke
options read data files reads ../shared/data where it is there, else small generated files in the same
layout (`tests.helpers.fake_data`): every entry runs on any clone.
"""
import pytest

from cl.config import RunConfig
from cl.errors import ConfigError
from cl.registry import TRANSFERS
from cl.testing import check_transfer, reads_data_files, transfer_data_missing
from tests.conftest import IN_CI, SHARED_DATA

CONTRACT = [e.name for e in TRANSFERS.entries() if not str(e.target).startswith("tests.")]
CASES = [pytest.param(n, marks=pytest.mark.shared_data(fallback=True)) if reads_data_files(n) else n for n in CONTRACT]


def test_transfer_experiments_are_registered():
    assert {"mobiletl", "scalearn", "skillpack"} <= set(CONTRACT)
    assert {"scalearn", "skillpack"} <= {n for n in CONTRACT if reads_data_files(n)}


@pytest.mark.parametrize("name", CASES)
def test_transfer_contract(name, shared_store, tmp_path):
    root = None
    if reads_data_files(name):          # the offline folder, else generated files in its layout
        root = SHARED_DATA
        if (why := transfer_data_missing(name, root)) is not None:
            if IN_CI:
                pytest.fail(f"CI has ../shared/data, yet: {why}")
            from tests.helpers.fake_data import write_offline_text

            root = write_offline_text(tmp_path / "data")
            assert transfer_data_missing(name, root) is None, \
                f"{name}: tests/helpers/fake_data.py does not yet write what its smoke options read"
    check_transfer(name, tracking_uri=shared_store, data_root=root, cache_dir=tmp_path / "cache")


def test_transfer_configs_reject_continual_learning_keys():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict({"transfer": {"name": "mobiletl"}, "strategy": "naive", "plugins": [{"name": "fpf"}]})
    assert any(p.startswith("strategy: a transfer run takes no strategy") for p in info.value.problems)
    assert any(p.startswith("plugins:") for p in info.value.problems)
    with pytest.raises(ConfigError, match="transfer.name: unknown transfer 'mobiletll'; registered: .*mobiletl"):
        RunConfig.from_dict({"transfer": {"name": "mobiletll"}})
    with pytest.raises(ConfigError, match="transfer.method"):
        RunConfig.from_dict({"transfer": {"name": "mobiletl", "method": "everything"}})


def test_continual_learning_hashes_do_not_move():
    """Adding the optional `transfer` and `plugins` keys leaves existing configs' identities alone."""
    cfg = RunConfig.from_dict({"scenario": "split_digits", "model": "mlp", "strategy": "naive"})
    assert "transfer" not in cfg.identity() and "plugins" not in cfg.identity()
    assert cfg.config_hash == "c859246e2eaa08bd"     # as before these keys existed (finished cells stay reused)


def test_publish_directory_is_all_or_nothing(tmp_path):
    from cl.cache import publish_directory

    target = tmp_path / "entry"
    with pytest.raises(RuntimeError):
        with publish_directory(target) as partial:
            (partial / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []        # nothing half-written is left
    with publish_directory(target) as partial:
        (partial / "a").write_text("first")
    with publish_directory(target) as partial:                          # a second writer loses quietly
        (partial / "a").write_text("second")
    assert (target / "a").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["entry"]


def test_build_lock_makes_a_second_builder_wait_for_the_first(tmp_path):
    """Two cells that need one cache entry: the second enters only after the first has left (so it
    finds the entry built instead of building it again)."""
    import threading
    import time

    from cl.cache import build_lock
    from tests.helpers.waiting import wait_until

    events = []

    def builder(name, hold):
        with build_lock(tmp_path / "entry"):
            events.append(f"{name} in")
            time.sleep(hold)
            events.append(f"{name} out")

    first = threading.Thread(target=builder, args=("first", 0.3))
    first.start()
    wait_until(lambda: "first in" in events, what="the first builder holding the lock", limit_s=60, poll_s=0.01)
    second = threading.Thread(target=builder, args=("second", 0.0))
    second.start()
    first.join()
    second.join()
    assert events == ["first in", "first out", "second in", "second out"]
