"""The python blocks of the README and of docs/*.md, for the tests that compile them
(tests/unit/test_readme.py) and run them (tests/integration/test_doc_examples.py)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PAGES = {path.name: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
TEXTS = {"README.md": README, **{f"docs/{name}": text for name, text in PAGES.items()}}
BLOCKS = [
    (name, block)
    for name, text in TEXTS.items()
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S)
]


def example(page: str, defines: str) -> str:
    """The python block of ``page`` that defines ``defines``."""
    found: list[str] = [b for name, b in BLOCKS if name == page and f"def {defines}(" in b]
    assert len(found) == 1, f"{page}: {len(found)} blocks define {defines}"
    return found[0]
