"""The README is the front page of the docs site: its first lines are the two commands the demo and
CI run, and every link it has into docs/ reaches a page and a heading there. (The site's own links
are checked by ``mkdocs build --strict``, which scripts/test.sh runs.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _slug(heading: str) -> str:
    """A heading's id, as MkDocs' and GitHub's renderers make it for the headings these pages have."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"\s+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+?)\s*$", text, re.MULTILINE)}


def test_readme_starts_with_the_demo_and_test_commands():
    assert README.splitlines()[:4] == [
        "```",
        "bash scripts/demo.sh     # set up a venv, run gunicorn under memguard with a leaking app under load, "
        "print what happened",
        "bash scripts/test.sh     # set up a venv per gunicorn major, 22 to 27, and run the test suite in each",
        "```",
    ]


def test_readme_links_into_the_docs_reach_a_page_and_its_heading():
    links = re.findall(r"\]\((docs/[^)#\s]*)(?:#([^)\s]+))?\)", README)
    assert len({page for page, _ in links}) >= 12
    for page, anchor in links:
        path = ROOT / page
        assert path.is_file() or (path / "index.md").is_file(), f"README links to {page}, which is missing"
        if anchor:
            assert anchor in _anchors(path), f"README links to {page}#{anchor}: no such heading"


def test_every_docs_page_is_in_the_navigation():
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert pages and pages == set(re.findall(r":\s+(\S+\.md)\s*$", mkdocs, re.MULTILINE))
