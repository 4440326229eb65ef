"""The QA text set CMT reads with ``dataset: squad``: XQuAD-en, SQuAD v1.1's dev subset in SQuAD's JSON — where to
fetch it and how it is laid out (``clsuite data list`` / ``clsuite data fetch``).

Where the file must lie is `transfer.cmt.data.squad_path`'s rule, called here, not restated; a fetch stages the
files, reads them with CMT's own loader, then moves them into place (`transfer.common.datasets`).

Source and checksums (sha256 of the downloaded file): google-deepmind/xquad at a fixed commit. The URL names the
commit, so the files cannot change; the sha256 are those of this project's offline copy, which
../shared/data/text/PROVENANCE.tsv traces to exactly those files. The loader (torch) is imported at fetch time
only, so registering imports no torch.
"""
from __future__ import annotations

from pathlib import Path

from cl.datasets import DatasetSource, Download, FetchError, register
from transfer.common.datasets import downloads_of, place_files

XQUAD_BASE = "https://raw.githubusercontent.com/google-deepmind/xquad/7d30520c717524000f0d9d2f9c10a069acd9d285/"
FOLDER = "qa/xquad_en_squad11_dev_subset"

# What the dataset downloads; `cl.datasets.fetch` reads this table when it runs.
DOWNLOADS: dict[str, tuple[Download, ...]] = {
    "xquad-en": (
        Download("xquad.en.json", (XQUAD_BASE + "xquad.en.json",),
                 sha256="e4c57d1c9143aaa1c5d265ba5987a65f4e69528d2a98f29d6e75019b10344f29"),
        Download("CC-BY-SA4.0.txt", (XQUAD_BASE + "CC-BY-SA4.0.txt",),
                 sha256="25ddafc153e4cfdafd70729574ef1b44348e1814709e57680d55347038d3f92c"),
    ),
}


def _locate(root: Path) -> Path:
    from transfer.cmt.data import squad_path

    return squad_path(root).parent


def _verify(stage_root: Path) -> str:
    from transfer.cmt.data import squad_stream

    documents = squad_stream(data_root=stage_root, seed=None)
    if not documents:
        raise FetchError("xquad.en.json: no paragraph with an answered question")
    return f"{len(documents)} paragraphs, {sum(len(d.qas) for d in documents)} questions"


register(DatasetSource(
    name="xquad-en", title="XQuAD-en (SQuAD v1.1 dev subset)", group="qa", install_dir=f"text/{FOLDER}",
    layout=f"text/{FOLDER}/xquad.en.json (SQuAD v1.1 JSON)", read_by="cmt (dataset: squad)",
    license="CC BY-SA 4.0", locate=_locate, downloads=downloads_of(DOWNLOADS, "xquad-en"),
    build=place_files(FOLDER), verify=_verify))
