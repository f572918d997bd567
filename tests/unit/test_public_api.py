import asyncconsumer
import asyncconsumer.testing


def test_all_lists_exactly_the_public_names() -> None:
    # ("@py..." names are pytest assertion-rewriting helpers: the package ships a plugin)
    public = {name for name in dir(asyncconsumer) if not name.startswith(("_", "@"))}
    modules = {"testing"}  # subpackages appear once imported
    assert set(asyncconsumer.__all__) - {"__version__"} == public - modules
    for name in asyncconsumer.__all__:
        assert getattr(asyncconsumer, name) is not None


def test_testing_exports() -> None:
    assert set(asyncconsumer.testing.__all__) == {"EmbeddedBroker", "create_topic"}
