from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from channels.layers import get_channel_layer

from django_sse.database import close_db_thread_connections
from django_sse.hub import close_hub


@pytest.fixture(scope="session", autouse=True)
def _close_stream_db_thread(django_db_setup: None, django_db_blocker: object) -> Iterator[None]:
    yield
    # The stream database thread keeps its connection between queries; the test database
    # cannot be dropped while it is open.
    close_db_thread_connections()


@pytest_asyncio.fixture
async def hub_cleanup() -> AsyncIterator[None]:
    """Close this test's hub and empty the channel layer afterwards."""
    yield
    await close_hub()
    layer = get_channel_layer()
    if layer is not None and hasattr(layer, "flush"):
        try:
            await layer.flush()
        except NotImplementedError:
            pass
