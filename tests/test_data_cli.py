"""`clsuite data list` / `clsuite data fetch` against an HTTP server on 127.0.0.1 started here.

The server serves small files with the real names and formats (MNIST idx .gz, CIFAR-10's
python tarball, a GLUE zip, MSR paraphrase files, SST/TREC lines, SQuAD JSON). Their checksums
are injected where the real code reads them: torchvision's dataset classes for the images,
the `DOWNLOADS` tables of `transfer.common.datasets`, `transfer.skillpack.datasets` and
`transfer.cmt.datasets` for the text sets. After a fetch, the suite's own readers load the
result (the split_mnist / split_cifar10 / split_cifar100 scenarios, GLUE's loader, the skills, the SQuAD stream).
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import pickle
import socket
import struct
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cl.cli import app
from cl.datasets import Download, sources

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


# --------------------------------------------------------------------------- the loopback server


class _Handler(http.server.SimpleHTTPRequestHandler):
    truncate: set[str] = set()       # paths answered with a Content-Length the body never reaches

    def log_message(self, *args):    # keep pytest's output clean
        pass

    def do_GET(self):
        if self.path.lstrip("/") in self.truncate:
            body = (Path(self.directory) / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body) * 2))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """(base URL, served folder, set of paths to cut short) — files go in <folder>/<dataset>/<file>."""
    folder = tmp_path / "served"
    folder.mkdir()
    truncate: set[str] = set()
    handler = type("Handler", (_Handler,), {"truncate": truncate})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            lambda *a, **k: handler(*a, directory=str(folder), **k))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", folder, truncate
    httpd.shutdown()
    httpd.server_close()


def clsuite(*args: str, env: dict | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve(folder: Path, dataset: str, name: str, data: bytes) -> Path:
    path = folder / dataset / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# --------------------------------------------------------------------------- tiny files in the real formats


def mnist_files(per_class: int = 2, test_per_class: int = 1) -> dict[str, bytes]:
    """The four idx files, gzipped, with the real magic numbers and 28×28 images."""
    rng = np.random.default_rng(0)

    def pair(n_per_class):
        labels = np.repeat(np.arange(10, dtype=np.uint8), n_per_class)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        return (gzip.compress(struct.pack(">IIII", 2051, len(labels), 28, 28) + images.tobytes(), mtime=0),
                gzip.compress(struct.pack(">II", 2049, len(labels)) + labels.tobytes(), mtime=0))

    train_x, train_y = pair(per_class)
    test_x, test_y = pair(test_per_class)
    return dict(zip(MNIST_FILES, (train_x, train_y, test_x, test_y)))


def inject_mnist(monkeypatch, files: dict[str, bytes], cls: str = "MNIST") -> None:
    import torchvision

    monkeypatch.setattr(getattr(torchvision.datasets, cls), "resources", [(n, md5(d)) for n, d in files.items()])


def cifar_archive(dataset: str) -> tuple[bytes, dict[str, str]]:
    """cifar-10-python.tar.gz / cifar-100-python.tar.gz with the real member names and pickle layout;
    every class once per file."""
    rng = np.random.default_rng(1)
    n = 10 if dataset == "cifar10" else 100
    if dataset == "cifar10":
        folder, files = "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        labels, meta_name, meta = "labels", "batches.meta", {"label_names": [f"class{i}" for i in range(n)]}
    else:
        folder, files, labels, meta_name = "cifar-100-python", ["train", "test"], "fine_labels", "meta"
        meta = {"fine_label_names": [f"class{i}" for i in range(n)], "coarse_label_names": ["all"]}
    members = {}
    for name in files:
        batch = {"batch_label": name, labels: list(range(n)), "coarse_labels": [0] * n,
                 "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 "filenames": [f"img_{i}.png" for i in range(n)]}
        members[name] = pickle.dumps(batch, protocol=2)
    members[meta_name] = pickle.dumps(meta, protocol=2)
    sums = {name: md5(data) for name, data in members.items()}
    members["readme.html"] = b"<html></html>"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), sums


def glue_zip(folder: str, files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{folder}/", "")
        for name, text in files.items():
            zf.writestr(f"{folder}/{name}", text)
    return buffer.getvalue()


RTE_ROWS = "index\tsentence1\tsentence2\tlabel\n" + "".join(
    f"{i}\tA man sleeps {i}.\tSomeone rests.\t{'entailment' if i % 2 else 'not_entailment'}\n" for i in range(6))
RTE_FILES = {"train.tsv": RTE_ROWS, "dev.tsv": RTE_ROWS,
             "test.tsv": "index\tsentence1\tsentence2\n0\tA dog barks.\tAn animal is loud.\n"}


def inject(monkeypatch, name: str, base: str, files: dict[str, bytes]) -> None:
    """Pin the sha256 of the served files in the table the real code reads (the module that registers `name`)."""
    from transfer.cmt import datasets as qa
    from transfer.common import datasets as shared
    from transfer.skillpack import datasets as skill_texts

    table = next(m.DOWNLOADS for m in (shared, skill_texts, qa) if name in m.DOWNLOADS)
    monkeypatch.setitem(table, name, tuple(
        Download(f, (f"{base}/canonical/{f}",), sha256=sha256(d)) for f, d in files.items()))


# --------------------------------------------------------------------------- fetch: success


def test_fetch_mnist_lands_torchvision_layout_and_split_mnist_reads_it(server, tmp_path, monkeypatch):
    base, folder, _ = server
    files = mnist_files()
    for name, data in files.items():
        serve(folder, "mnist", name, data)
    inject_mnist(monkeypatch, files)
    root = tmp_path / "data"

    result = clsuite("data", "fetch", "mnist", "--root", root, "--mirror", base)
    assert result.exit_code == 0, result.output
    assert "mnist: fetched into" in result.output and "20 train / 10 test images, 10 classes" in result.output
    assert "%|" not in result.output            # no progress bar off a terminal
    raw = sorted(p.name for p in (root / "MNIST" / "raw").iterdir())
    assert raw == sorted([*MNIST_FILES, *(n[:-3] for n in MNIST_FILES)])
    assert sorted(p.name for p in root.iterdir()) == ["MNIST"]        # no staging folder left behind

    from cl.scenarios import split_mnist

    scenario = split_mnist(data_root=str(root), n_experiences=5)
    assert scenario.n_classes == 10 and sum(scenario.train_sizes) == 20 and sum(scenario.test_sizes) == 10
    assert scenario.input_shape == (1, 28, 28)

    again = clsuite("data", "fetch", "mnist", "--root", root, "--mirror", base)
    assert again.exit_code == 0 and "already at" in again.output


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_fetch_cifar_from_its_python_tarball(server, tmp_path, monkeypatch, dataset):
    import torchvision

    base, folder, _ = server
    cls = getattr(torchvision.datasets, {"cifar10": "CIFAR10", "cifar100": "CIFAR100"}[dataset])
    archive, sums = cifar_archive(dataset)
    serve(folder, dataset, cls.filename, archive)
    monkeypatch.setattr(cls, "tgz_md5", md5(archive))
    monkeypatch.setattr(cls, "train_list", [[name, sums[name]] for name, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[name, sums[name]] for name, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": sums[cls.meta["filename"]]})
    root = tmp_path / "data"

    result = clsuite("data", "fetch", dataset, "--root", root, "--mirror", base)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in root.iterdir()) == [cls.base_folder]      # the archive is not kept

    from cl import scenarios

    scenario = getattr(scenarios, f"split_{dataset}")(data_root=str(root), n_experiences=5)
    n_train = 50 if dataset == "cifar10" else 100
    assert scenario.input_shape == (3, 32, 32) and sum(scenario.train_sizes) == n_train


def test_fetch_glue_zip_and_mrpc_built_by_glues_recipe(server, tmp_path, monkeypatch):
    base, folder, _ = server
    rte = {"RTE.zip": glue_zip("RTE", RTE_FILES)}
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n"
    mrpc = {
        "msr_paraphrase_train.txt": (header + "".join(f"{i % 2}\t{100 + i}\t{200 + i}\tSentence {i}.\tClause {i}.\r\n"
                                                      for i in range(8))).encode(),
        "msr_paraphrase_test.txt": (header + "1\t900\t901\tTest one.\tTest 1.\r\n").encode(),
        "dev_ids.tsv": b"101\t201\r\n102\t202\r\n",
    }
    for name, files in (("glue-rte", rte), ("glue-mrpc", mrpc)):
        for f, data in files.items():
            serve(folder, name, f, data)
        inject(monkeypatch, name, base, files)
    root = tmp_path / "data"

    result = clsuite("data", "fetch", "glue-rte", "glue-mrpc", "--root", root, "--mirror", base)
    assert result.exit_code == 0, result.output
    assert "glue-rte: fetched" in result.output and "6 train / 6 dev examples" in result.output

    from transfer.common import glue

    assert len(glue.load_split("rte", "dev", str(root))) == 6
    train, dev = glue.load_split("mrpc", "train", str(root)), glue.load_split("mrpc", "dev", str(root))
    assert (len(train), len(dev)) == (6, 2)               # GLUE's dev pairs moved out of train
    assert dev.texts == [("Sentence 1.", "Clause 1."), ("Sentence 2.", "Clause 2.")]
    mrpc_dir = root / "text" / "glue" / "MRPC"
    assert (mrpc_dir / "test.tsv").read_text().splitlines()[1] == "0\t900\t901\tTest one.\tTest 1."
    assert sorted(p.name for p in (mrpc_dir / "raw").iterdir()) == sorted(mrpc)


def test_fetch_skill_and_qa_text_sets(server, tmp_path, monkeypatch):
    base, folder, _ = server
    squad = {"version": "1.1", "data": [{"title": "France", "paragraphs": [
        {"context": "Paris is the capital of France.",
         "qas": [{"id": "q1", "question": "What is the capital of France?",
                  "answers": [{"text": "Paris", "answer_start": 0}]}]}]}]}
    sets = {
        "sst2-sentences": {"stsa.binary.train": b"1 a moving film\n0 a dull film\n",
                           "stsa.binary.dev": b"1 fine\n", "stsa.binary.test": b"0 tedious\n"},
        "trec": {"train.txt": "DESC:def What is a caf\xe9 ?\nNUM:date When was it built ?\n".encode("latin-1"),
                 "test.txt": b"HUM:ind Who built it ?\n"},
        "xquad-en": {"xquad.en.json": json.dumps(squad).encode(), "CC-BY-SA4.0.txt": b"licence text\n"},
    }
    for name, files in sets.items():
        for f, data in files.items():
            serve(folder, name, f, data)
        inject(monkeypatch, name, base, files)
    root = tmp_path / "data"

    result = clsuite("data", "fetch", "sst2-sentences", "trec", "xquad-en", "--root", root, "--mirror", base)
    assert result.exit_code == 0, result.output
    assert "1 paragraphs, 1 questions" in result.output

    from transfer.cmt.data import squad_stream
    from transfer.skillpack.skills import load_skill

    assert [e.answer for e in load_skill("sentiment", "train", data_root=str(root))] == ["positive", "negative"]
    assert [e.answer for e in load_skill("qtype", "train", data_root=str(root))] == ["description", "number"]
    assert squad_stream(data_root=str(root))[0].qas[0].answer == "Paris"


def test_without_a_mirror_the_canonical_locations_are_tried_in_order(server, tmp_path, monkeypatch):
    """torchvision's MNIST lists two mirrors; the first one down, the second one serves."""
    import torchvision

    base, folder, _ = server
    monkeypatch.delenv("CLSUITE_DATA_MIRROR", raising=False)
    files = mnist_files()
    for name, data in files.items():
        serve(folder, "canonical", name, data)
    inject_mnist(monkeypatch, files)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [dead, f"{base}/canonical/"])
    root = tmp_path / "data"

    result = clsuite("data", "fetch", "mnist", "--root", root)
    assert result.exit_code == 0, result.output
    assert (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()


def test_a_local_folder_serves_as_mirror(server, tmp_path, monkeypatch):
    """file:// mirrors: files carried over by hand, laid out <mirror>/<dataset>/<file>, still checksummed."""
    base, folder, _ = server
    files = {"RTE.zip": glue_zip("RTE", RTE_FILES)}
    serve(folder, "glue-rte", "RTE.zip", files["RTE.zip"])
    inject(monkeypatch, "glue-rte", base, files)
    root = tmp_path / "data"

    result = clsuite("data", "fetch", "glue", "--root", root, "--mirror", folder.as_uri())
    assert result.exit_code == 2, result.output          # the group asks for every GLUE task; only RTE is there
    assert (root / "text" / "glue" / "RTE" / "dev.tsv").is_file()
    assert "glue-rte: fetched" in result.output and "could not download" in result.output


# --------------------------------------------------------------------------- fetch: failures write nothing


@pytest.mark.parametrize("dataset", ["mnist", "glue-rte"])
def test_corrupted_archive_is_a_checksum_error_and_leaves_nothing(server, tmp_path, monkeypatch, dataset):
    base, folder, _ = server
    if dataset == "mnist":
        files = mnist_files()
        inject_mnist(monkeypatch, files)
    else:
        files = {"RTE.zip": glue_zip("RTE", RTE_FILES)}
        inject(monkeypatch, dataset, base, files)
    for name, data in files.items():
        corrupted = bytearray(data)
        if name == list(files)[-1]:
            corrupted[len(corrupted) // 2] ^= 0xFF           # one flipped byte in the last file
        serve(folder, dataset, name, bytes(corrupted))
    root = tmp_path / "data"
    root.mkdir()
    (root / "mine.txt").write_text("the user's own file")

    result = clsuite("data", "fetch", dataset, "--root", root, "--mirror", base)
    assert result.exit_code == 2, result.output
    assert "checksum mismatch" in result.output and f"{base}/{dataset}/{list(files)[-1]}" in result.output
    assert tree(root) == ["mine.txt"]


def test_archive_without_the_expected_files_is_rejected(server, tmp_path, monkeypatch):
    base, folder, _ = server
    files = {"RTE.zip": glue_zip("RTE", {"train.tsv": RTE_ROWS})}          # no dev.tsv
    serve(folder, "glue-rte", "RTE.zip", files["RTE.zip"])
    inject(monkeypatch, "glue-rte", base, files)
    root = tmp_path / "data"

    result = clsuite("data", "fetch", "glue-rte", "--root", root, "--mirror", base)
    assert result.exit_code == 2, result.output
    assert "RTE.zip: lacks RTE/dev.tsv" in result.output
    assert not root.exists()                      # the folders a failed fetch created are gone too


def test_download_cut_off_half_way_leaves_nothing(server, tmp_path, monkeypatch):
    base, folder, truncate = server
    files = mnist_files()
    for name, data in files.items():
        serve(folder, "mnist", name, data)
    inject_mnist(monkeypatch, files)
    truncate.add(f"mnist/{MNIST_FILES[2]}")       # two files arrive whole, the third stops half-way
    root = tmp_path / "data"

    result = clsuite("data", "fetch", "mnist", "--root", root, "--mirror", base)
    assert result.exit_code == 2, result.output
    assert f"could not download {MNIST_FILES[2]}" in result.output and "connection closed after" in result.output
    assert not root.exists()


def test_unreachable_host_exits_2_naming_the_url_and_the_way_out(tmp_path):
    with socket.socket() as sock:                 # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = tmp_path / "data"

    result = clsuite("data", "fetch", "glue-rte", "--root", root,
                     env={"CLSUITE_DATA_MIRROR": f"http://127.0.0.1:{port}"})
    assert result.exit_code == 2, result.output
    assert f"http://127.0.0.1:{port}/glue-rte/RTE.zip" in result.output
    assert "No network?" in result.output and "--root" in result.output and "text/glue/RTE" in result.output
    assert not root.exists()


def test_incomplete_folder_is_kept_unless_force(server, tmp_path, monkeypatch):
    base, folder, _ = server
    files = {"RTE.zip": glue_zip("RTE", RTE_FILES)}
    serve(folder, "glue-rte", "RTE.zip", files["RTE.zip"])
    inject(monkeypatch, "glue-rte", base, files)
    root = tmp_path / "data"
    partial = root / "text" / "glue" / "RTE"
    partial.mkdir(parents=True)
    (partial / "train.tsv").write_text(RTE_ROWS)

    refused = clsuite("data", "fetch", "glue-rte", "--root", root, "--mirror", base)
    assert refused.exit_code == 2 and "exists but is incomplete" in refused.output and "--force" in refused.output
    assert tree(partial) == ["train.tsv"]

    forced = clsuite("data", "fetch", "glue-rte", "--root", root, "--mirror", base, "--force")
    assert forced.exit_code == 0, forced.output
    assert tree(partial) == ["dev.tsv", "test.tsv", "train.tsv"]
    assert tree(root / "text" / "glue") == ["RTE", "RTE/dev.tsv", "RTE/test.tsv", "RTE/train.tsv"]


def test_unknown_dataset_exits_2_listing_the_known_ones(tmp_path):
    result = clsuite("data", "fetch", "imagenet", "--root", tmp_path)
    assert result.exit_code == 2
    assert "unknown dataset 'imagenet'" in result.output and "glue-rte" in result.output


# --------------------------------------------------------------------------- list


def test_data_list_reports_present_and_absent(tmp_path):
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        (raw / name[:-3]).write_bytes(b"")         # list checks presence, as the scenarios' preflight does
    (root / "text" / "trec").mkdir(parents=True)
    for name in ("train.txt", "test.txt"):
        (root / "text" / "trec" / name).write_text("DESC:def What ?\n")

    result = clsuite("data", "list", "--json", env={"CLSUITE_DATA_ROOT": str(root)})
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in map(json.loads, result.output.splitlines())}
    assert set(rows) == {s.name for s in sources()}
    present = {name for name, r in rows.items() if r["present"]}
    assert present == {"digits", "mnist", "trec"}
    assert rows["mnist"]["path"] == str((root / "MNIST").resolve())
    assert rows["glue-rte"]["path"] == str((root / "text" / "glue" / "RTE").resolve())
    assert "GLUE tasks RTE not found" in rows["glue-rte"]["problem"]

    table = clsuite("data", "list", "--root", root)
    assert table.exit_code == 0, table.output
    assert f"data root: {root.resolve()} (--root)" in table.output
    assert "clsuite data fetch fmnist cifar10" in table.output

    from cl.datafiles import DataNotFoundError, check_dataset

    with pytest.raises(DataNotFoundError, match="`clsuite data fetch cifar10 --root <data root>`"):
        check_dataset("cifar10", root)          # a scenario's missing-data error names the command


@pytest.mark.parametrize("source", [s for s in sources() if s.fetchable], ids=lambda s: s.name)
def test_every_download_is_pinned(source):
    """Every file a fetch downloads has a checksum to match, and a canonical https location."""
    downloads = list(source.downloads())
    assert downloads
    for item in downloads:
        assert item.md5 or item.sha256, f"{source.name}: {item.filename} has no checksum"
        assert item.urls and all(u.startswith("https://") or u.startswith("http://") for u in item.urls)
    assert source.build is not None and source.verify is not None
