"""malloc tuning reaches this process and the children the CLI starts."""

from __future__ import annotations

import os
import subprocess
import sys

from dynamo_triton.malloc import MMAP_THRESHOLD, TRIM_THRESHOLD, tune_malloc


def test_tune_malloc_exports_thresholds_and_keeps_the_operators_values() -> None:
    env = {"MALLOC_TRIM_THRESHOLD_": "1048576"}
    assert tune_malloc(env) is True  # glibc accepted both
    assert env == {"MALLOC_TRIM_THRESHOLD_": "1048576", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}


def test_the_cli_passes_the_thresholds_to_its_children() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    code = "from dynamo_triton.cli.main import _configure_process; import os, subprocess, sys; _configure_process(); "
    code += "print(subprocess.run(['env'], capture_output=True, text=True).stdout)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60).stdout
    assert f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}" in out.splitlines()
    assert f"MALLOC_TRIM_THRESHOLD_={TRIM_THRESHOLD}" in out.splitlines()
