"""``asyncconsumer run module:attr``: what it says when the target cannot be loaded."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from asyncconsumer.cli import load_app, main

APP = """
from asyncconsumer import ConsumerApp
consumers = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="g")
other = ConsumerApp(bootstrap_servers="127.0.0.1:9092", group_id="h")
settings = 42
"""

BROKEN = """
import json

def load_settings():
    return json.loads("{not json")

SETTINGS = load_settings()
"""


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """Write a module into the working directory; return its (unique) name."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        name = f"user_module_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source)
        return name

    return write


def message(exc: pytest.ExceptionInfo[SystemExit]) -> str:
    return str(exc.value.code)


def test_a_missing_attribute_is_named_with_the_apps_the_module_has(
    module: Callable[[str], str],
) -> None:
    name = module(APP)
    with pytest.raises(SystemExit) as exc:
        load_app(f"{name}:app")
    assert message(exc) == (
        f"error: module {name!r} has no attribute 'app'; "
        "ConsumerApp attributes it has: consumers, other"
    )
    empty = module("x = 1\n")
    with pytest.raises(SystemExit) as exc:
        load_app(f"{empty}:app")
    assert message(exc) == (
        f"error: module {empty!r} has no attribute 'app'; it has no ConsumerApp attribute"
    )
    with pytest.raises(SystemExit) as exc:
        load_app(f"{name}:settings")
    assert message(exc) == f"error: '{name}:settings' is not a ConsumerApp (got int)"
    assert load_app(f"{name}:consumers").settings.group_id == "g"


def test_a_module_that_does_not_exist_is_one_line(module: Callable[[str], str]) -> None:
    with pytest.raises(SystemExit) as exc:
        load_app("no_such_module_here:app")
    assert message(exc) == (
        "error: cannot import 'no_such_module_here': No module named 'no_such_module_here'"
    )


def test_an_exception_while_importing_shows_the_users_frames_only(
    module: Callable[[str], str],
) -> None:
    name = module(BROKEN)
    with pytest.raises(SystemExit) as exc:
        load_app(f"{name}:app")
    text = message(exc)
    lines = text.splitlines()
    assert lines[0] == f"error: importing {name!r} raised an exception:"
    assert f"{name}.py" in text
    assert "SETTINGS = load_settings()" in text
    assert 'return json.loads("{not json")' in text
    assert lines[-1].startswith("json.decoder.JSONDecodeError: Expecting property name")
    assert "importlib" not in text
    assert "asyncconsumer" not in text.replace(name, "")  # none of our frames
    # A dependency the user's module imports and that is missing is the user's error too.
    missing = module("import not_installed_dependency\n")
    with pytest.raises(SystemExit) as exc:
        load_app(f"{missing}:app")
    text = message(exc)
    assert f'{missing}.py", line 1' in text
    assert text.endswith("ModuleNotFoundError: No module named 'not_installed_dependency'")


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["broker", "--help"]])
def test_help_shows_no_docstring_markup(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: asyncconsumer" in out
    for markup in ("``", ":class:", ":func:", ":meth:"):
        assert markup not in out
