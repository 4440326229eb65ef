"""cl.cache.cached: built once, reused, rebuilt when an entry is incomplete, never seen half-written."""
import threading
import time

from cl.cache import cached


def test_an_entry_is_built_once_and_then_reused(tmp_path):
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "model.pt").write_text("weights")

    key = {"seed": 0, "lr": 0.1}
    first = cached("kind", key, build, name="source", complete="model.pt", root=tmp_path)
    again = cached("kind", dict(reversed(list(key.items()))), build, name="source", complete="model.pt", root=tmp_path)
    assert first == again and len(calls) == 1
    assert first.parent == tmp_path / "kind" and first.name.startswith("source-")
    assert (first / "model.pt").read_text() == "weights" and (first / "key.json").is_file()
    assert sorted(p.name for p in (tmp_path / "kind").iterdir()) == [first.name]   # no lock or partial files
    other = cached("kind", {**key, "seed": 1}, build, name="source", complete="model.pt", root=tmp_path)
    assert other != first and len(calls) == 2


def test_an_entry_without_its_complete_file_is_rebuilt(tmp_path):
    def build(folder):
        (folder / "result.json").write_text("{}")

    path = cached("kind", {"a": 1}, build, complete="result.json", root=tmp_path)
    (path / "result.json").unlink()                 # an entry an older version left without its result
    assert (cached("kind", {"a": 1}, build, complete="result.json", root=tmp_path) / "result.json").is_file()


def test_parallel_callers_wait_for_one_build(tmp_path):
    calls, seen = [], []

    def slow_build(folder):
        calls.append(1)
        time.sleep(0.5)
        (folder / "done").write_text("1")

    def worker():
        path = cached("kind", {"k": 1}, slow_build, complete="done", root=tmp_path)
        seen.append((path / "done").read_text())

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert calls == [1] and seen == ["1", "1", "1"]


def test_a_failed_build_publishes_nothing(tmp_path):
    def broken(folder):
        (folder / "half").write_text("x")
        raise RuntimeError("out of memory")

    try:
        cached("kind", {"k": 2}, broken, complete="done", root=tmp_path)
    except RuntimeError:
        pass
    assert not any((tmp_path / "kind").iterdir())
