"""pytest plugin registered by dynamo-triton: fixtures for dyntriton contract suites.

Loaded by pytest through the ``pytest11`` entry point; it imports nothing heavy.
"""

from __future__ import annotations
