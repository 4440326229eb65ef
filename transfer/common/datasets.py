"""The GLUE tasks the transfer experiments read (ScaLearn; SkillPack's paraphrase skill), where to fetch them and
how they are laid out, and what every method's text datasets share.

Registered in `cl.datasets` (``clsuite data list`` / ``clsuite data fetch``). Where a dataset must lie is the
reader's own rule, called here, not restated (`transfer.common.glue.glue_dir`). A fetch writes the standard
layout, ``<data root>/text/...``, which every reader looks at first, and then loads the staged copy with the same
reader before anything is moved into place. A method's own text sets register from its package's ``datasets.py``
with the helpers below (`transfer.skillpack.datasets`: SST sentences, TREC; `transfer.cmt.datasets`: the SQuAD
subset); `transfer.methods` imports them all.

Sources and checksums (sha256 of the downloaded file):

* GLUE CoLA, SST-2, STS-B, RTE, WNLI: the archives GLUE's own download script fetches from
  dl.fbaipublicfiles.com/glue/data; their sha256 as published in huggingface/datasets
  (``datasets/glue/dataset_infos.json``, ``download_checksums``). Each zip is also CRC-checked
  and must hold ``<Task>/train.tsv`` and ``dev.tsv``.
* GLUE MRPC: as GLUE's script builds it — the Microsoft Research Paraphrase Corpus files from
  SentEval's copy plus GLUE's list of dev pairs (sha256 from the same record; the dev-id list
  also matches this project's offline copy byte for byte); ``train.tsv`` / ``dev.tsv`` split by
  that list, ``test.tsv`` indexed.

None of the experiments reads SuperGLUE, MNIST-1D or NQ-open today, so they are not listed.
"""
from __future__ import annotations

from pathlib import Path

from typing import Callable, Mapping, Sequence

from cl.datasets import DatasetSource, Download, FetchError, extract_zip, place, register
from transfer.common import glue

GLUE_BASE = "https://dl.fbaipublicfiles.com/glue/data/"
SENTEVAL_BASE = "https://dl.fbaipublicfiles.com/senteval/senteval_data/"

# What each dataset downloads; `cl.datasets.fetch` reads this table when it runs.
DOWNLOADS: dict[str, tuple[Download, ...]] = {
    "glue-cola": (Download("CoLA.zip", (GLUE_BASE + "CoLA.zip",),
                           sha256="f212fcd832b8f7b435fb991f101abf89f96b933ab400603bf198960dfc32cbff"),),
    "glue-sst2": (Download("SST-2.zip", (GLUE_BASE + "SST-2.zip",),
                           sha256="d67e16fb55739c1b32cdce9877596db1c127dc322d93c082281f64057c16deaa"),),
    "glue-stsb": (Download("STS-B.zip", (GLUE_BASE + "STS-B.zip",),
                           sha256="e60a6393de5a8b5b9bac5020a1554b54e3691f9d600b775bd131e613ac179c85"),),
    "glue-rte": (Download("RTE.zip", (GLUE_BASE + "RTE.zip",),
                          sha256="6bf86de103ecd335f3441bd43574d23fef87ecc695977a63b82d5efb206556ee"),),
    "glue-wnli": (Download("WNLI.zip", (GLUE_BASE + "WNLI.zip",),
                           sha256="ae0e8e4d16f4d46d4a0a566ec7ecceccfd3fbfaa4a7a4b4e02848c0f2561ac46"),),
    "glue-mrpc": (
        Download("msr_paraphrase_train.txt", (SENTEVAL_BASE + "msr_paraphrase_train.txt",),
                 sha256="60a9b09084528f0673eedee2b69cb941920f0b8cd0eeccefc464a98768457f89"),
        Download("msr_paraphrase_test.txt", (SENTEVAL_BASE + "msr_paraphrase_test.txt",),
                 sha256="a04e271090879aaba6423d65b94950c089298587d9c084bf9cd7439bd785f784"),
        Download("dev_ids.tsv", (GLUE_BASE + "mrpc_dev_ids.tsv",),
                 sha256="971d7767d81b997fd9060ade0ec23c4fc31cbb226a55d1bd4a1bac474eb81dc7"),
    ),
}

GLUE_LICENSES = {"cola": "research use (CoLA)", "mrpc": "Microsoft Research shared-source licence",
                 "rte": "research use (RTE)", "sst2": "research use (SST)", "stsb": "CC BY-SA 4.0",
                 "wnli": "CC BY 4.0"}
GLUE_READERS = "scalearn (tasks and target)"
TEXT = Path("text")


def downloads_of(table: Mapping[str, Sequence[Download]], name: str) -> Callable[[], Sequence[Download]]:
    """What `DatasetSource.downloads` takes: `name`'s entry of a module's download table, read at fetch time."""
    return lambda: table[name]


def split_sizes(texts: dict[str, int]) -> str:
    return " / ".join(f"{n} {split}" for split, n in texts.items())


def place_files(folder: str) -> Callable[[Path, dict[str, Path]], None]:
    """A `DatasetSource.build` that puts the downloaded files, as they are, into ``text/<folder>``."""
    def build(stage_root: Path, files: dict[str, Path]) -> None:
        place(files, stage_root / TEXT / folder)
    return build


# --------------------------------------------------------------------------- GLUE


def _glue_locate(task: str):
    return lambda root: glue.glue_dir(root, [task]) / glue.TASKS[task].folder


def _glue_build_zip(task: str):
    folder = glue.TASKS[task].folder

    def build(stage_root: Path, files: dict[str, Path]) -> None:
        (archive,) = files.values()
        extract_zip(archive, stage_root / TEXT / "glue", prefix=f"{folder}/",
                    expect=(f"{folder}/train.tsv", f"{folder}/dev.tsv"))
    return build


def _mrpc_build(stage_root: Path, files: dict[str, Path]) -> None:
    """GLUE's recipe: train/dev split the MSR training file by GLUE's dev-pair list; test gets an index column."""
    out = stage_root / TEXT / "glue" / "MRPC"
    dev_ids = {tuple(line.strip().split("\t")) for line in files["dev_ids.tsv"].read_text(encoding="utf-8").splitlines()
               if line.strip()}
    if not dev_ids:
        raise FetchError("dev_ids.tsv: empty list of MRPC dev pairs")
    out.mkdir(parents=True)

    def rows(path: Path):
        with open(path, encoding="utf-8") as handle:
            header = handle.readline()
            for n, line in enumerate(handle, start=2):
                if not line.strip():
                    continue
                fields = line.strip().split("\t")
                if len(fields) != 5:
                    raise FetchError(f"{path.name}: line {n} has {len(fields)} tab-separated fields, expected 5")
                yield header, fields

    with open(out / "train.tsv", "w", encoding="utf-8") as train, open(out / "dev.tsv", "w", encoding="utf-8") as dev:
        for i, (header, (label, id1, id2, s1, s2)) in enumerate(rows(files["msr_paraphrase_train.txt"])):
            if i == 0:
                train.write(header)
                dev.write(header)
            (dev if (id1, id2) in dev_ids else train).write(f"{label}\t{id1}\t{id2}\t{s1}\t{s2}\n")
    with open(out / "test.tsv", "w", encoding="utf-8") as test:
        test.write("index\t#1 ID\t#2 ID\t#1 String\t#2 String\n")
        for i, (_, (_, id1, id2, s1, s2)) in enumerate(rows(files["msr_paraphrase_test.txt"])):
            test.write(f"{i}\t{id1}\t{id2}\t{s1}\t{s2}\n")
    place(files, out / "raw")


def _glue_verify(task: str):
    def verify(stage_root: Path) -> str:
        sizes = {split: len(glue.load_split(task, split, str(stage_root))) for split in ("train", "dev")}
        if not all(sizes.values()):
            raise FetchError(f"GLUE {task}: no labelled rows read ({split_sizes(sizes)})")
        return f"{split_sizes(sizes)} examples"
    return verify


for _task, _spec in glue.TASKS.items():
    _name = f"glue-{_task}"
    _fetchable = _name in DOWNLOADS
    register(DatasetSource(
        name=_name, title=f"GLUE {_spec.folder}", group="glue", install_dir=str(TEXT / "glue" / _spec.folder),
        layout=f"text/glue/{_spec.folder}/{{train,dev}}.tsv (GLUE's TSVs)",
        read_by=GLUE_READERS + (", skillpack skill 'paraphrase'" if _task == "mrpc" else ""),
        license=GLUE_LICENSES.get(_task, "see the task's GLUE page"), locate=_glue_locate(_task),
        downloads=downloads_of(DOWNLOADS, _name) if _fetchable else None,
        build=(_mrpc_build if _task == "mrpc" else _glue_build_zip(_task)) if _fetchable else None,
        verify=_glue_verify(_task) if _fetchable else None))
