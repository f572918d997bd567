import asyncconsumer
import asyncconsumer.testing


def test_all_lists_exactly_the_public_names() -> None:
    # ("@py..." names are pytest assertion-rewriting helpers: the package ships a plugin)
    public = {name for name in dir(asyncconsumer) if not name.startswith(("_", "@"))}
    modules = {"testing", "integrations", "metrics", "cli"}  # modules appear once imported
    assert set(asyncconsumer.__all__) - {"__version__"} == public - modules
    for name in asyncconsumer.__all__:
        assert getattr(asyncconsumer, name) is not None


def test_testing_exports() -> None:
    assert set(asyncconsumer.testing.__all__) == {
        "ApacheKafka",
        "ApacheKafkaUnavailableError",
        "BrokerSecurity",
        "CertificateFiles",
        "EmbeddedBroker",
        "MemoryKafka",
        "TestClient",
        "create_topic",
        "make_certificates",
    }


def test_importing_the_package_imports_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = (
        "import sys, asyncconsumer, asyncconsumer.cli; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'starlette', 'aiohttp', 'prometheus_client', 'pydantic', 'opentelemetry', "
        "'cryptography'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stderr
