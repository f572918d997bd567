"""The README's examples compile and name only what the package has."""

import ast
import re
from pathlib import Path

import asyncconsumer
from asyncconsumer import Consumer, ConsumerApp

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_python_blocks_compile() -> None:
    assert len(BLOCKS) >= 5
    for block in BLOCKS:
        compile(block, "<README>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_imported_names_exist() -> None:
    for block in BLOCKS:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asyncconsumer"):
                module = __import__(node.module or "", fromlist=["_"])
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"


def test_documented_methods_exist() -> None:
    for obj, cls in (("app", ConsumerApp), ("consumer", Consumer)):
        for name in set(re.findall(rf"\b{obj}\.([a-z_]+)\b", README)):
            assert hasattr(cls, name), f"README mentions {obj}.{name}"
    for name in re.findall(r"`asyncconsumer\.([a-z_]+)\(", README):
        assert hasattr(asyncconsumer, name)


def test_every_section_the_docs_include_is_marked_in_the_readme() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    included = {
        name
        for page in docs.glob("*.md")
        for name in re.findall(r'--8<-- "README\.md:([a-z_-]+)"', page.read_text())
    }
    assert len(included) >= 10
    for name in included:
        start, end = f"<!-- --8<-- [start:{name}] -->", f"<!-- --8<-- [end:{name}] -->"
        assert README.count(start) == 1, name
        assert README.index(start) < README.index(end), name
