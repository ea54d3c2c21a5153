"""dyntriton: Triton models behind a distributed, self-discovering KServe v2 frontend.

The core defines interfaces and the runtime that composes them; concrete stores,
transports, frontends and backends are plugins found through the ``dyntriton``
entry-point group.
"""

from dynamo_triton.hookspecs import hookimpl
from dynamo_triton.plugins import make_plugin_manager

__all__ = ["hookimpl", "make_plugin_manager"]
