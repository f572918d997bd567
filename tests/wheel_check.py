"""``make wheel-check``: build, check and install the distribution as a user would.

Builds the wheel and the sdist (``python -m build``), runs ``twine check --strict``
on them, installs the wheel into a fresh virtual environment, and from outside the
source tree runs ``asyncconsumer --help``, imports the package (its version and
``py.typed``) and lets pytest load the plugin through its entry point.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PLUGIN_TEST = """
import asyncconsumer

def test_the_plugin_is_loaded_from_the_installed_wheel(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("asyncconsumer")
    assert "site-packages" in asyncconsumer.__file__
"""


def run(*command: str | Path, cwd: Path = ROOT) -> str:
    print("$", " ".join(map(str, command)), flush=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}  # no PYTHONPATH, no venv
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="wheel-check-") as name:
        tmp = Path(name)
        dist = tmp / "dist"
        run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
        built = sorted(dist.iterdir())
        run(sys.executable, "-m", "twine", "check", "--strict", *built)
        (wheel,) = (path for path in built if path.suffix == ".whl")
        version = wheel.name.split("-")[1]
        venv = tmp / "venv"
        run(sys.executable, "-m", "venv", venv)
        python, bin_dir = venv / "bin" / "python", venv / "bin"
        run(
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            wheel,
            "pytest",
        )
        assert "usage: asyncconsumer" in run(bin_dir / "asyncconsumer", "--help", cwd=tmp)
        code = (
            "import importlib.resources, asyncconsumer, asyncconsumer.testing.pytest_plugin;"
            "print(asyncconsumer.__version__,"
            " importlib.resources.files('asyncconsumer').joinpath('py.typed').is_file())"
        )
        assert run(python, "-c", code, cwd=tmp).split() == [version, "True"]
        (tmp / "test_plugin.py").write_text(PLUGIN_TEST)
        pytest = (python, "-m", "pytest", "-p", "no:cacheprovider")
        run(*pytest, "-q", "test_plugin.py", cwd=tmp)
        fixtures = run(*pytest, "--fixtures", "test_plugin.py", cwd=tmp)
        assert "kafka_broker" in fixtures
        assert "kafka_bootstrap" in fixtures
        print(f"OK: {', '.join(path.name for path in built)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
