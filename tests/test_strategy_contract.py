"""The contract every registered strategy and plugin passes (cf. scikit-learn's check_estimator).

The checks themselves are public, in `cl.testing` (third-party methods run them on their own entries):
each strategy builds from its registry entry with default options, trains two experiences of
split_digits through the real runner into a real MLflow store, finishes with every final metric and
artifact, accounts its memory, learns above chance, and its logged config round-trips to the same hash.
"""
import pytest

from cl.registry import PLUGINS, STRATEGIES
from cl.testing import check_plugin, check_strategy

# every registered strategy, except the deliberately failing ones of tests/helpers
CONTRACT = [e.name for e in STRATEGIES.entries() if not str(e.target).startswith("tests.")]


def test_every_baseline_is_under_contract():
    assert {"naive", "replay", "ewc", "lwf", "icarl", "gdumb", "er_ace", "dark_er", "cumulative"} <= set(CONTRACT)


@pytest.mark.parametrize("name", CONTRACT)
def test_strategy_contract(name, shared_store):
    check_strategy(name, tracking_uri=shared_store)


@pytest.mark.parametrize("strategy", ["naive", "replay"])
@pytest.mark.parametrize("plugin", [e.name for e in PLUGINS.entries()])
def test_plugin_contract(plugin, strategy, shared_store):
    """Every registered add-on runs on a strategy with and without a buffer, costs FLOPs, logs its files."""
    check_plugin(plugin, strategy=strategy, tracking_uri=shared_store)


def test_the_checks_import_nothing_heavy_until_they_run():
    import subprocess
    import sys

    code = ("import sys, cl.testing; "
            "print('HEAVY', [m for m in ('torch', 'avalanche', 'mlflow') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


def test_a_check_names_the_entry_and_what_failed(shared_store):
    """The checks can fail, and say which entry failed which clause."""
    with pytest.raises(AssertionError, match=r"strategy 'no_such_strategy': not registered; registered: .*naive"):
        check_strategy("no_such_strategy", tracking_uri=shared_store)
    import tests.helpers.failing_strategies  # noqa: F401 - registers `hoarder`

    with pytest.raises(AssertionError, match=r"strategy 'hoarder': keeps 7 exemplars without a mem_size option"):
        check_strategy("hoarder", tracking_uri=shared_store)
