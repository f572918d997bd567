"""The examples of the README and of the documentation pages (docs/) compile and name
only what the package has; the sections the pages include from the README exist."""

import ast
import re

import pytest

import asyncconsumer
from asyncconsumer import Consumer, ConsumerApp

from ..doc_examples import BLOCKS, PAGES, README, TEXTS, example


def test_the_examples_are_found_where_they_live() -> None:
    assert sum(name == "README.md" for name, _ in BLOCKS) >= 1  # the first consumer
    assert len({name for name, _ in BLOCKS}) >= 8  # and the concept pages
    assert len(BLOCKS) >= 17  # as many as the README had before the docs took them


@pytest.mark.parametrize(("name", "block"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_python_blocks_compile(name: str, block: str) -> None:
    compile(block, f"<{name}>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize(("name", "block"), BLOCKS, ids=[name for name, _ in BLOCKS])
def test_imported_names_exist(name: str, block: str) -> None:
    for node in ast.walk(ast.parse(block)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("asyncconsumer"):
            module = __import__(node.module or "", fromlist=["_"])
            for alias in node.names:
                assert hasattr(module, alias.name), f"{name}: {node.module}.{alias.name}"


@pytest.mark.parametrize("name", list(TEXTS))
def test_documented_methods_exist(name: str) -> None:
    text = TEXTS[name]
    app = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g")
    consumer = Consumer("t", bootstrap_servers="127.0.0.1:9092", group_id="g")
    for word, obj in (("app", app), ("consumer", consumer)):
        # app.seek, consumer.getmany; not a link such as docs/consumer.md
        for attribute in set(re.findall(rf"(?<![\w/]){word}\.([a-z_]+)\b", text)):
            assert hasattr(obj, attribute), f"{name} mentions {word}.{attribute}"
    for function in re.findall(r"`asyncconsumer\.([a-z_]+)\(", text):
        assert hasattr(asyncconsumer, function), f"{name} mentions asyncconsumer.{function}"


def test_every_section_the_docs_include_is_marked_in_the_readme() -> None:
    included = {
        section
        for text in PAGES.values()
        for section in re.findall(r'--8<-- "README\.md:([a-z_-]+)"', text)
    }
    assert {"intro", "install", "first-consumer", "quickstart"} <= included
    for section in included:
        start, end = f"<!-- --8<-- [start:{section}] -->", f"<!-- --8<-- [end:{section}] -->"
        assert README.count(start) == 1, section
        assert README.index(start) < README.index(end), section


def test_the_readme_links_to_every_concept_page() -> None:
    linked = set(re.findall(r"\]\(docs/([a-z-]+\.md)", README))
    pages = set(PAGES) - {"index.md", "changelog.md"}
    assert pages <= linked, sorted(pages - linked)


async def test_the_documented_test_client_example_runs() -> None:
    namespace: dict[str, object] = {}
    exec(compile(example("docs/testing.md", "test_orders"), "<docs/testing.md>", "exec"), namespace)
    test = namespace["test_orders"]
    assert callable(test)
    await test()
    assert namespace["handled"] == [{"id": 1}, {"id": 2}]


async def test_the_documented_memory_kafka_example_runs() -> None:
    from asyncconsumer.testing import MemoryKafka

    namespace: dict[str, object] = {}
    exec(
        compile(example("docs/testing.md", "test_async_for"), "<docs/testing.md>", "exec"),
        namespace,
    )
    test = namespace["test_async_for"]
    assert callable(test)
    await test(MemoryKafka())


async def test_the_readme_testing_example_runs_against_the_first_consumer() -> None:
    namespace: dict[str, object] = {"__name__": "orders_service"}  # not __main__: no run()
    exec(compile(example("README.md", "handle"), "<README.md>", "exec"), namespace)
    exec(compile(example("README.md", "test_handle"), "<README.md>", "exec"), namespace)
    test = namespace["test_handle"]
    assert callable(test)
    await test()
