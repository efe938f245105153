import os

import pytest

from tests.kernel.daemon_fixture import daemon  # noqa: F401  (fixture)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Kernel tests must never silently pass on the wrong machine.
    if os.environ.get("AGENTCG_IN_VM") != "1":
        for item in items:
            if "kernel" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="kernel tier runs only inside the test VM"))
