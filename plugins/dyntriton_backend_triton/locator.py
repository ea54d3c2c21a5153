"""Find a Triton installation: ``--triton-home``/``TRITON_HOME``, ``/opt/tritonserver``, the nvidia-pytriton wheel."""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from dynamo_triton.errors import ConfigError

__all__ = ["TritonInstall", "locate_triton"]

NGC_HOME = Path("/opt/tritonserver")
PY_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True)
class TritonInstall:
    """Where the pieces of one Triton distribution are.

    :param source: how it was found (``TRITON_HOME``, ``/opt/tritonserver``, ``nvidia-pytriton wheel``).
    :param libs_dir: bundled shared libraries to preload before ``library`` (wheel installs), or None.
    :param stub: the python backend stub for this interpreter, or None when there is none.
    """

    source: str
    home: Path
    library: Path
    backends_dir: Path
    binary: Path | None
    libs_dir: Path | None
    stub: Path | None

    def backends(self) -> list[str]:
        """Backends present in ``backends_dir`` (folders holding a ``libtriton_<name>.so``)."""
        if not self.backends_dir.is_dir():
            return []
        return sorted(p.name for p in self.backends_dir.iterdir() if (p / f"libtriton_{p.name}.so").exists())


def _from_home(home: Path, source: str) -> TritonInstall:
    library = home / "lib" / "libtritonserver.so"
    if not library.exists():
        raise ConfigError(
            f"{source} points at {home}, but {library} does not exist",
            hint="point TRITON_HOME at a Triton install (the folder with lib/libtritonserver.so and backends/)",
        )
    stub = home / "backends" / "python" / "triton_python_backend_stub"
    binary = home / "bin" / "tritonserver"
    return TritonInstall(
        source=source,
        home=home,
        library=library,
        backends_dir=home / "backends",
        binary=binary if binary.exists() else None,
        libs_dir=None,
        stub=stub if stub.exists() else None,
    )


def _from_wheel() -> TritonInstall | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    package = Path(next(iter(spec.submodule_search_locations)))
    home = package / "tritonserver"
    libs_dir = package.parent / "nvidia_pytriton.libs"
    libraries = sorted(libs_dir.glob("libtritonserver*.so*")) if libs_dir.is_dir() else []
    if not home.is_dir() or not libraries:
        return None
    stub = home / "python_backend_stubs" / PY_VERSION / "triton_python_backend_stub"
    binary = home / "bin" / "tritonserver"
    return TritonInstall(
        source="nvidia-pytriton wheel",
        home=home,
        library=libraries[0],
        backends_dir=home / "backends",
        binary=binary if binary.exists() else None,
        libs_dir=libs_dir,
        stub=stub if stub.exists() else None,
    )


def locate_triton(triton_home: str | os.PathLike[str] | None = None) -> TritonInstall:
    """The Triton to embed, in this order: ``triton_home`` (``--triton-home`` / ``TRITON_HOME``, read by the
    CLI), /opt/tritonserver, the wheel.

    Raises ConfigError listing every place searched and how to get Triton.
    """
    if triton_home:
        return _from_home(Path(triton_home), "--triton-home (TRITON_HOME)")
    if (NGC_HOME / "lib" / "libtritonserver.so").exists():
        return _from_home(NGC_HOME, str(NGC_HOME))
    wheel = _from_wheel()
    if wheel is not None:
        return wheel
    raise ConfigError(
        "no Triton Inference Server found: searched --triton-home, TRITON_HOME, /opt/tritonserver "
        "and the nvidia-pytriton wheel",
        hint="pip install 'dynamo-triton[triton]' (brings Triton 2.51 for CPU), or set TRITON_HOME",
    )
