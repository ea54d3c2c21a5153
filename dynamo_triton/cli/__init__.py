"""The ``dyntriton`` command line: a click group whose commands load lazily."""

from dynamo_triton.cli.main import main

__all__ = ["main"]
