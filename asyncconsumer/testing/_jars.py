"""Apache Kafka's broker jars from Maven Central, cached per version.

The first call for a version runs Maven on the ``pom.xml`` shipped next to this
module (``kafka/pom.xml``: ``org.apache.kafka:kafka_2.13`` and a log4j binding,
``maven-dependency-plugin`` pinned) and copies the runtime jars into
``$XDG_CACHE_HOME/asyncconsumer/kafka/<version>/`` (``~/.cache`` by default).
Resolution writes into a temporary directory that is renamed into place only
when complete, under a file lock, so an interrupted download never leaves a half
cache and parallel processes (pytest-xdist workers) download once.
``ASYNCCONSUMER_KAFKA_JARS`` names a directory of jars to use instead (for
example a Kafka distribution's ``libs/``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

__all__ = [
    "DEFAULT_VERSION",
    "JARS_ENV",
    "ApacheKafkaUnavailableError",
    "cache_root",
    "check_java",
    "find_tools",
    "resolve_jars",
]

DEFAULT_VERSION = "4.3.1"
LOG4J_VERSION = "2.25.4"  # the log4j Kafka 4.3 ships with
JARS_ENV = "ASYNCCONSUMER_KAFKA_JARS"
MIN_JAVA = 17
RESOLVE_TIMEOUT = 600.0


class ApacheKafkaUnavailableError(RuntimeError):
    """Apache Kafka cannot be run here: ``java`` or ``mvn`` is missing or too old,
    the jars could not be resolved, or a node did not start. The message says what
    was tried and what to install."""


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/asyncconsumer/kafka`` (``~/.cache/...`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "asyncconsumer" / "kafka"


def _version_of(command: list[str], pattern: str) -> tuple[str, int] | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout + done.stderr
    match = re.search(pattern, text)
    return (text.strip(), int(match.group(1))) if match else (text.strip(), 0)


def check_java(java: str | None = None) -> str:
    """The path of a ``java`` >= 17, or :class:`ApacheKafkaUnavailableError` saying why not."""
    path = java or shutil.which("java")
    if path is None:
        raise ApacheKafkaUnavailableError(
            f"Apache Kafka needs Java {MIN_JAVA} or later: no `java` on PATH "
            f"(PATH={os.environ.get('PATH', '')!r}); install a JDK or JRE >= {MIN_JAVA}, "
            "e.g. `apt-get install openjdk-17-jre-headless`"
        )
    found = _version_of([path, "-version"], r'version "(?:1\.)?(\d+)')
    if found is None or found[1] < MIN_JAVA:
        said = found[0].splitlines()[0] if found and found[0] else "no answer"
        raise ApacheKafkaUnavailableError(
            f"Apache Kafka 4.x needs Java {MIN_JAVA} or later; `{path} -version` said: {said}"
        )
    return path


def _check_mvn() -> str:
    path = shutil.which("mvn")
    if path is None:
        raise ApacheKafkaUnavailableError(
            "resolving Apache Kafka's jars needs Maven 3.6.3 or later: no `mvn` on PATH "
            f"(PATH={os.environ.get('PATH', '')!r}); install Maven (e.g. `apt-get install "
            f"maven`), or set {JARS_ENV} to a directory holding Kafka's jars "
            "(a Kafka distribution's libs/)"
        )
    found = _version_of([path, "-v"], r"Apache Maven 3\.(\d+)")
    if found is None or found[1] < 6:
        said = found[0].splitlines()[0] if found and found[0] else "no answer"
        raise ApacheKafkaUnavailableError(
            f"Maven 3.6.3 or later is needed; `{path} -v` said: {said}"
        )
    return path


def find_tools() -> str | None:
    """Why Apache Kafka from Maven cannot run here (``None``: it can, as far as a
    quick look tells: ``java`` >= 17, and ``mvn`` or cached or given jars)."""
    try:
        check_java()
        explicit = os.environ.get(JARS_ENV)
        if explicit and not any(Path(explicit).glob("kafka_2.13-*.jar")):
            raise ApacheKafkaUnavailableError(f"{JARS_ENV}={explicit!r} holds no kafka_2.13-*.jar")
        if not explicit and not _is_complete(cache_root() / DEFAULT_VERSION, DEFAULT_VERSION):
            _check_mvn()
    except ApacheKafkaUnavailableError as exc:
        return str(exc)
    return None


def _is_complete(directory: Path, version: str) -> bool:
    return (directory / f"kafka_2.13-{version}.jar").is_file()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_jars(version: str = DEFAULT_VERSION, *, cache: Path | None = None) -> Path:
    """The directory holding Apache Kafka ``version``'s runtime jars, resolving them
    with Maven the first time (blocking; minutes at most on a cold ``~/.m2``)."""
    explicit = os.environ.get(JARS_ENV)
    if explicit:
        if not any(Path(explicit).glob("kafka_2.13-*.jar")):
            raise ApacheKafkaUnavailableError(f"{JARS_ENV}={explicit!r} holds no kafka_2.13-*.jar")
        return Path(explicit)
    root = cache or cache_root()
    final = root / version
    if _is_complete(final, version):
        return final
    with _locked(root / f"{version}.lock"):
        if _is_complete(final, version):  # another process resolved it meanwhile
            return final
        for stale in root.glob(f"{version}.partial-*"):  # left by a killed resolution
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=f"{version}.partial-", dir=root))
        try:
            _run_maven(version, work)
            if final.exists():
                shutil.rmtree(final)
            os.rename(work / "jars", final)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return final


def _run_maven(version: str, work: Path) -> None:
    mvn = _check_mvn()
    pom = work / "pom.xml"
    pom.write_bytes(resources.files("asyncconsumer.testing").joinpath("kafka/pom.xml").read_bytes())
    command = [
        mvn,
        "--batch-mode",
        "--quiet",
        "-f",
        str(pom),
        f"-Dkafka.version={version}",
        f"-Dlog4j.version={LOG4J_VERSION}",
        f"-Dkafka.jars={work / 'jars'}",
        "dependency:copy-dependencies",
    ]
    try:
        done = subprocess.run(
            command,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=RESOLVE_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise ApacheKafkaUnavailableError(
            f"resolving Apache Kafka {version} took over {RESOLVE_TIMEOUT:.0f}s: "
            f"{' '.join(command)}"
        ) from exc
    if done.returncode != 0 or not _is_complete(work / "jars", version):
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
        raise ApacheKafkaUnavailableError(
            f"Maven could not resolve org.apache.kafka:kafka_2.13:{version} from Maven "
            f"Central (exit code {done.returncode}). It ran: {' '.join(command)}\n{tail}\n"
            "Check the version exists and Maven Central is reachable (proxy settings in "
            f"~/.m2/settings.xml), or set {JARS_ENV} to a directory of Kafka's jars."
        )
