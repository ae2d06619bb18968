from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from asgiref.sync import SyncToAsync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.contrib.auth.models import User

from django_sse.database import close_connections, close_db_thread_connections
from django_sse.hub import close_hub
from django_sse.models import Job
from tests.utils import make_session


@pytest.fixture(scope="session", autouse=True)
def _close_stream_db_thread(django_db_setup: None, django_db_blocker: object) -> Iterator[None]:
    yield
    # The stream database thread keeps its connection between queries; the test database
    # cannot be dropped while it is open.
    close_db_thread_connections()
    # So does the thread where the tests' own sync_to_async calls (and the async ORM) ran.
    SyncToAsync.single_thread_executor.submit(close_connections).result()


@pytest_asyncio.fixture
async def hub_cleanup() -> AsyncIterator[None]:
    """Close this test's hub and empty the channel layer afterwards."""
    yield
    await close_hub()
    layer = get_channel_layer()
    # Redis layers keep one connection pool per event loop; flushing from this loop would
    # close the publisher thread's pools too. Their per-process prefix isolates the tests.
    if isinstance(layer, InMemoryChannelLayer):
        await layer.flush()


def pytest_report_header(config: pytest.Config) -> str:
    from django.conf import settings

    engine = str(settings.DATABASES["default"]["ENGINE"]).rsplit(".", 1)[-1]
    layer = str(settings.CHANNEL_LAYERS["default"]["BACKEND"]).rsplit(".", 1)[-1]
    return f"django_sse: database={engine} channel layer={layer}"


# -- a job and its owner's session, for the stream tests ------------------------------------


@pytest.fixture
def owner() -> User:
    return User.objects.create_user("owner", password="pw")


@pytest.fixture
def owner_key(owner: User) -> str:
    """A saved session logged in as ``owner``."""
    return make_session(owner)


@pytest.fixture
def job(owner: User) -> Job:
    return Job.objects.create(owner=owner, name="Report")
