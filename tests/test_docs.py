"""Every "methods.md §N.M" the repository cites resolves to a heading of docs/methods.md, which ships.

Code comments, YAML files, the README and tests cite sections as ``methods.md §2.6`` or a bare
``§2.6``; ``paper §3.1.3`` names a section of a paper and is left alone.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHODS = ROOT / "docs" / "methods.md"
REFERENCE = re.compile(r"(\b[Pp]aper\s+)?§\s?(\d+(?:\.\d+)*)")
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".txt"}


def headings(text: str) -> set[str]:
    return set(re.findall(r"^#+ §(\d+(?:\.\d+)*)", text, re.M))


def references(text: str) -> list[str]:
    """``"see methods.md §2.6."`` -> ``["2.6"]``; paper sections are not ours."""
    return [m.group(2).rstrip(".") for m in REFERENCE.finditer(text) if not m.group(1)]


def repository_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if Path(name).suffix in TEXT_SUFFIXES and (ROOT / name).is_file()]


def test_the_reference_parser():
    assert references("methods.md §2.6, §4.2 and paper §3.1.3; §1.7.") == ["2.6", "4.2", "1.7"]
    assert headings("## §2 IDa-Det\n### §2.6 Distillation mask\n#### §2.12.1 Box\nnot § 9\n") == {"2", "2.6", "2.12.1"}


def test_every_section_reference_resolves_to_a_heading_of_methods_md():
    known = headings(METHODS.read_text(encoding="utf-8"))
    assert {"0", "1", "2", "3", "4", "5", "6", "7"} <= known
    unresolved = [f"{path.relative_to(ROOT)}: §{ref}" for path in repository_files() if path != Path(__file__)
                  for ref in references(path.read_text(encoding="utf-8", errors="replace")) if ref not in known]
    assert unresolved == []
    cited = sum(len(references(path.read_text(encoding="utf-8", errors="replace"))) for path in repository_files())
    assert cited > 100  # the check saw the code's citations, not an empty file list


def test_every_test_the_readme_names_exists():
    """The README's reliability table backs each promise with a named test; a renamed test must not
    leave it pointing at nothing. ``::name`` continues the file named before it."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    named, current = [], None
    for match in re.finditer(r"`(test_\w+\.py)?::(test_\w+)`", text):
        current = match.group(1) or current
        named.append((current, match.group(2)))
    assert len(named) >= 20
    sources = {path.name: path.read_text(encoding="utf-8") for path in (ROOT / "tests").rglob("test_*.py")}
    missing = [f"{file}::{name}" for file, name in named if f"def {name}(" not in sources.get(file, "")]
    assert missing == []
