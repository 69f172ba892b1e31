"""Every ``docs/<page>.md#<anchor>`` that a docstring or comment in src/genba points to exists.

Lab notes and measurements live in docs/ and the code links to them; a renamed
heading would otherwise leave the code pointing at nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"docs/([\w-]+\.md)(?:#([\w-]+))?")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def test_code_links_to_docs_resolve():
    seen, broken = 0, []
    for src in sorted((ROOT / "src" / "genba").rglob("*.py")):
        for page, anchor in LINK.findall(src.read_text()):
            seen += 1
            path = ROOT / "docs" / page
            if not path.is_file():
                broken.append(f"{src.relative_to(ROOT)}: docs/{page} does not exist")
            elif anchor and anchor not in anchors(path):
                broken.append(f"{src.relative_to(ROOT)}: docs/{page} has no heading #{anchor}")
    assert seen > 0
    assert not broken, "\n".join(broken)
