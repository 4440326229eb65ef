"""benchmarks/fpf.py's cost–accuracy figure (issue #28: the paper's accuracy-vs-FLOPs figure) from the archived runs."""
import struct

from benchmarks import fpf, gridbench


def test_cost_accuracy_figure_plots_every_archived_fpf_run(tmp_path):
    args = gridbench.parser("fpf", store="fpf", quick_help="").parse_args(
        ["--no-run", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--data-root", str(tmp_path)])
    out = fpf.cost_accuracy_figure(args, out=tmp_path / "figure" / "cost_accuracy.png")
    assert out == tmp_path / "figure" / "cost_accuracy.png"
    header = out.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 3 * height           # one panel per dataset and buffer of the archive: 4 side by side


def test_cost_accuracy_figure_without_runs_draws_nothing(tmp_path):
    args = gridbench.parser("fpf", store="fpf", quick_help="").parse_args(
        ["--no-run", "--no-results", "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"])
    assert fpf.cost_accuracy_figure(args, out=tmp_path / "f.png") is None
    assert not (tmp_path / "f.png").exists()
