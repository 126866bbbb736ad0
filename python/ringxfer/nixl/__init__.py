"""NIXL's Python agent API on ringxfer: change ``from nixl._api import ...`` to
``from ringxfer.nixl import ...`` (or ``ringxfer.nixl._api``) and the rest of the
code runs unchanged. Follows NIXL 1.4's API; ``docs/python.md`` lists the
differences."""

from ._api import (  # noqa: F401
    NIXL_API_VERSION,
    nixl_agent,
    nixl_agent_config,
    nixl_backend_handle,
    nixl_prepped_dlist_handle,
    nixl_xfer_handle,
    nixlXferTelemetry,
)
from ._bindings import *  # noqa: F401,F403
