"""The text sets SkillPack's skills read besides GLUE's MRPC: SST-2 at sentence level (skill 'sentiment') and TREC
(skill 'qtype') — where to fetch them and how they are laid out (``clsuite data list`` / ``clsuite data fetch``).

Where the files must lie is `transfer.skillpack.skills`' rule, called here, not restated; a fetch stages the
files, loads them with the skill's own reader, then moves them into place (`transfer.common.datasets`).

Sources and checksums (sha256 of the downloaded file): the files of tonyzhaozh/few-shot-learning at a fixed
commit. The URLs name the commit, so the files cannot change; the sha256 are those of this project's offline
copies, which ../shared/data/text/PROVENANCE.tsv traces to exactly those files.
"""
from __future__ import annotations

from pathlib import Path

from cl.datafiles import DataNotFoundError
from cl.datasets import DatasetSource, Download, FetchError, register
from transfer.common.datasets import downloads_of, place_files, split_sizes
from transfer.skillpack import skills

FEW_SHOT_BASE = ("https://raw.githubusercontent.com/tonyzhaozh/few-shot-learning/"
                 "e04d8643be91c2cce63f33e07760ff75d5aa3ad0/data/")

# What each dataset downloads; `cl.datasets.fetch` reads this table when it runs.
DOWNLOADS: dict[str, tuple[Download, ...]] = {
    "sst2-sentences": (
        Download("stsa.binary.train", (FEW_SHOT_BASE + "sst2/stsa.binary.train",),
                 sha256="71c04bcc41291fa47454dd670df701b14ee9249156babeaac404cfe2c8d74338"),
        Download("stsa.binary.dev", (FEW_SHOT_BASE + "sst2/stsa.binary.dev",),
                 sha256="02fedc82855dbdcabe82c65ed1af6c6570788eaac51073cdb35ee8c7784426d1"),
        Download("stsa.binary.test", (FEW_SHOT_BASE + "sst2/stsa.binary.test",),
                 sha256="6a80dc9b9a0db2d3b37f2f809304febad31c90ab67a5b4157b7d9f881c53ef5b"),
    ),
    "trec": (
        Download("train.txt", (FEW_SHOT_BASE + "trec/train.txt",),
                 sha256="202e3e1ad6143ed4f147f199324277e25b2573a78c08c3af1ff840b49c0779de"),
        Download("test.txt", (FEW_SHOT_BASE + "trec/test.txt",),
                 sha256="69b2d406aa15b3b514b6bf9b3bf1fa2c3515ce7ae744651173f8e57347bfb2a9"),
    ),
}


def _locate(folder: str, names: tuple[str, ...]):
    def locate(root: Path) -> Path:
        base = skills._text_root(str(root)) / folder
        missing = [n for n in names if not (base / n).is_file()]
        if missing:
            raise DataNotFoundError(f"transfer.data_root: {', '.join(missing)} not in {base.resolve()}")
        return base
    return locate


def _verify(skill: str):
    def verify(stage_root: Path) -> str:
        sizes = {split: len(skills.load_skill(skill, split, data_root=str(stage_root))) for split in ("train", "test")}
        if not all(sizes.values()):
            raise FetchError(f"skill {skill}: no examples read ({split_sizes(sizes)})")
        return f"{split_sizes(sizes)} examples"
    return verify


register(DatasetSource(
    name="sst2-sentences", title="SST-2, sentence level", group="text", install_dir="text/sst2_sentence_level",
    layout="text/sst2_sentence_level/stsa.binary.{train,dev,test} ('label text' lines)",
    read_by="skillpack skill 'sentiment'", license="research use (SST)",
    locate=_locate("sst2_sentence_level", ("stsa.binary.train", "stsa.binary.test")),
    downloads=downloads_of(DOWNLOADS, "sst2-sentences"), build=place_files("sst2_sentence_level"),
    verify=_verify("sentiment")))

register(DatasetSource(
    name="trec", title="TREC question classification", group="text", install_dir="text/trec",
    layout="text/trec/{train,test}.txt ('COARSE:fine question' lines, latin-1)",
    read_by="skillpack skill 'qtype'", license="research use (TREC)",
    locate=_locate("trec", ("train.txt", "test.txt")),
    downloads=downloads_of(DOWNLOADS, "trec"), build=place_files("trec"), verify=_verify("qtype")))
