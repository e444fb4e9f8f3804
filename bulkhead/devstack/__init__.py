"""Run the whole Bulkhead stack as local processes, for ``make up`` and for tests.

>>> from bulkhead.devstack import Stack, StackConfig
>>> with Stack(StackConfig(var_dir=tmp, nats_url=None)) as stack:  # doctest: +SKIP
...     key = stack.create_api_key("alice")
...     stack.restart("executor_service", kill=True)

See :class:`Stack` for process names, restarts and logs.
"""

from bulkhead.devstack.config import (
    DEFAULT_PORTS,
    NATS_PROCESS,
    SERVICES,
    Instance,
    StackConfig,
)
from bulkhead.devstack.errors import StackError
from bulkhead.devstack.nats import (
    NatsServer,
    find_nats_server,
    jetstream_answers,
    jetstream_problem,
)
from bulkhead.devstack.ports import free_port, port_is_free
from bulkhead.devstack.process import ManagedProcess
from bulkhead.devstack.stack import Stack

__all__ = [
    "DEFAULT_PORTS",
    "NATS_PROCESS",
    "SERVICES",
    "Instance",
    "ManagedProcess",
    "NatsServer",
    "Stack",
    "StackConfig",
    "StackError",
    "find_nats_server",
    "free_port",
    "jetstream_answers",
    "jetstream_problem",
    "port_is_free",
]
