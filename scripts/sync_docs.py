"""Refresh every quoted report block in README.md and docs/*.md from the file it names.

A page quotes a committed report as ``<!-- from PATH -->`` ... ``<!-- end -->``;
tests/test_readme.py fails when a block differs from its file. After ``make reports`` (or a
study's ``report``), run ``python scripts/sync_docs.py`` to bring the pages back in line; it
prints the blocks it changed. Prose around the blocks is the writer's: numbers quoted there must
still occur in a committed report (the same test checks that).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

BLOCK = re.compile(r"(<!-- from (\S+) -->\n)(.*?)(<!-- end -->)", re.S)


def sync(repo: Path) -> list[str]:
    changed = []
    for page in [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]:
        text = page.read_text()

        def body(match: re.Match[str]) -> str:
            source = repo / match.group(2)
            if not source.is_file():
                sys.exit(f"error: {page.relative_to(repo)} quotes {match.group(2)}, "
                         "which does not exist")
            new = source.read_text().strip() + "\n"
            if new != match.group(3):
                changed.append(f"{page.relative_to(repo)}: {match.group(2)}")
            return match.group(1) + new + match.group(4)

        updated = BLOCK.sub(body, text)
        if updated != text:
            page.write_text(updated)
    return changed


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent
    for line in sync(root):
        print("synced", line)
