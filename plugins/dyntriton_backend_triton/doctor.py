"""``dyntriton doctor``: which Triton the triton backend embeds, and whether it can run here."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dynamo_triton.errors import DyntritonError

__all__ = ["diagnose", "doctor"]


def _gpu() -> str:
    if Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi"):
        return "GPU present (instance groups may use KIND_GPU)"
    return "CPU only (no NVIDIA GPU found; use KIND_CPU instance groups)"


def diagnose(triton_home: str | None = None) -> dict[str, Any]:
    """Facts about the Triton installation, and what to do about each problem found."""
    from dyntriton_backend_triton.completions import built_library
    from dyntriton_backend_triton.environment import (
        backends_directory,
        prepare_stub_environment,
        python_backend_problem,
    )
    from dyntriton_backend_triton.locator import locate_triton
    from dyntriton_backend_triton.server import ServerOptions, TritonServer

    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "environment": sys.prefix,
        "gpu": _gpu(),
        "problems": [],
    }
    try:
        install = locate_triton(triton_home)
    except DyntritonError as exc:
        report["problems"].append({"problem": exc.message, "fix": exc.hint})
        report["ok"] = False
        return report
    report.update(
        found=install.source,
        home=str(install.home),
        library=str(install.library),
        binary=str(install.binary) if install.binary else None,
        backends=install.backends(),
        python_stub=str(install.stub) if install.stub else None,
    )
    library = built_library()
    report["callbacks"] = (
        f"C ({library})"
        if library
        else "Python (ctypes, slower): reinstall dynamo-triton with a C compiler and the Python headers"
    )
    problem = python_backend_problem(install)
    report["python_backend"] = "usable" if problem is None else "not usable"
    if problem:
        report["problems"].append({"problem": problem, "fix": None})
    try:
        prepare_stub_environment(install)
        with tempfile.TemporaryDirectory(prefix="dyntriton-doctor-") as empty_repository:
            server = TritonServer(install, ServerOptions(Path(empty_repository), backends_directory(install)))
            server.start_blocking()
            try:
                report["version"] = server.server_metadata().get("version")
            finally:
                server.stop_blocking()
    except DyntritonError as exc:
        report["problems"].append({"problem": f"Triton did not start: {exc.message}", "fix": exc.hint})
    report["ok"] = not report["problems"]
    return report


@click.command()
@click.option("--triton-home", envvar="TRITON_HOME", help="Triton installation to check.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def doctor(triton_home: str | None, as_json: bool) -> None:
    """Check the Triton installation the triton backend would embed, and say what to fix."""
    report = diagnose(triton_home)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        table = Table(title="dyntriton doctor", show_header=False)
        table.add_column("what", no_wrap=True)
        table.add_column("found", overflow="fold")  # paths wrap whole instead of ending in "…"
        keys = ("found", "version", "home", "library", "binary", "python", "environment", "python_stub", "callbacks")
        for key in keys:
            if report.get(key):
                table.add_row(key, str(report[key]))
        if "backends" in report:
            table.add_row("backends", ", ".join(report["backends"]) or "none")
        if "python_backend" in report:
            table.add_row("python backend", report["python_backend"])
        table.add_row("hardware", report["gpu"])
        console = Console()
        console.print(table)
        for item in report["problems"]:
            console.print(f"[red]problem:[/] {item['problem']}")
            if item.get("fix"):
                console.print(f"  [dim]fix:[/] {item['fix']}")
        if report["ok"]:
            console.print("[green]ok[/]: the triton backend can serve models here")
    if not report["ok"]:
        sys.exit(1)
