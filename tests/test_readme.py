"""README's two set-up commands stay true: CI runs the same test command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> list[str]:
    section = ROOT.joinpath("README.md").read_text().split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands():
    commands = setup_commands()
    assert len(commands) == 2
    install, tests = commands
    assert "pip install -e '.[all]'" in install and "clsuite grid launch experiments/quickstart.yaml" in install
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    test_command = setup_commands()[1].replace(".venv/bin/", "")
    ci = ROOT.joinpath(".ci", "run").read_text()
    assert test_command in ci
    assert "HF_HUB_OFFLINE=1" in ci
