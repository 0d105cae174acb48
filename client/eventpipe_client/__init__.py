"""eventpipe's Python producer library: `Client` (threads) and `AsyncClient` (asyncio)."""

from eventpipe_client._wire import Counters, EventpipeError, Outcome, Policy
from eventpipe_client.aio import AsyncClient
from eventpipe_client.client import Client

__all__ = ["AsyncClient", "Client", "Counters", "EventpipeError", "Outcome", "Policy"]
__version__ = "0.1.0"
