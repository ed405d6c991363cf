"""The README's set-up commands and CI stay in step."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    readme = ROOT / "README.md"
    lines = readme.read_text().splitlines()
    block = lines[lines.index("```bash") + 1: lines.index("```")]
    assert len(block) == 2 and all(line.startswith("python3 -m venv .venv && ") for line in block)
    assert "pytest" in block[1] and "recipes/" in block[0]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert block[1] in ci
