"""MkDocs hooks.

- Docstrings use reStructuredText roles (:class:`X`); show them as code.
- Pages include README sections (``--8<-- "README.md:name"``), whose links point into
  ``docs/`` from the repository's root (``docs/handlers.md``, right on GitHub): inside
  the site they are re-rooted (``handlers.md``). A Markdown preprocessor that runs after
  the snippets are included does it, before MkDocs checks and converts the links.
"""

from __future__ import annotations

import re
from typing import Any

from markdown import Extension, Markdown
from markdown.preprocessors import Preprocessor

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):<code>(~?)([^<]*)</code>")
_INTO_DOCS = re.compile(r"\]\(docs/")


def _code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_code, html)


class _Reroot(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        return [_INTO_DOCS.sub("](", line) for line in lines]


class _RerootExtension(Extension):
    def extendMarkdown(self, md: Markdown) -> None:
        # pymdownx.snippets runs at priority 32: lower runs later.
        md.preprocessors.register(_Reroot(md), "asyncconsumer_reroot", 1)


def on_config(config: Any, **kwargs: Any) -> Any:
    config.markdown_extensions.append(_RerootExtension())
    return config
