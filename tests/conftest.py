"""Suite-wide setup: runs before any test module imports grpc."""

from __future__ import annotations

import os

# Triton's python backend forks its stub process; grpc's fork handlers, when enabled, abort a
# process that has run a grpc server before ("Check failed: is_forking != was_forking"). The
# dyntriton CLI sets the same default for the processes it starts.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
