"""Run the CLI as ``python -m dynamo_triton``."""

from dynamo_triton.cli import main

if __name__ == "__main__":
    main()
