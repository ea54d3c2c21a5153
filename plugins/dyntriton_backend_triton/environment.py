"""Make an embedded Triton work in whatever environment the user runs: libraries, backends, python stub.

The user never sets an environment variable by hand:

- :func:`load_library` preloads the wheel's bundled libraries (auditwheel-renamed,
  found by soname once loaded) so ``libtritonserver`` loads without ``LD_LIBRARY_PATH``.
- :func:`backends_directory` gives Triton a backends folder whose python backend
  has the stub built for *this* interpreter (the wheel keeps stubs per Python
  version apart; a private copy under the user cache puts the right one in place).
- :func:`prepare_stub_environment` sets what the stub child process inherits:
  ``PATH`` with this environment's ``bin`` first (the stub resolves its Python,
  and so numpy and site-packages, from it) and ``LD_LIBRARY_PATH`` with the
  bundled libs and the folder of ``libpython3.X.so``.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

from dynamo_triton.errors import ConfigError
from dyntriton_backend_triton.locator import PY_VERSION, TritonInstall

__all__ = [
    "backends_directory",
    "clean_stale_shm",
    "load_library",
    "prepare_stub_environment",
    "python_backend_problem",
]

log = logging.getLogger(__name__)

_LOADED: dict[Path, ctypes.CDLL] = {}
SHM_PREFIX = "triton_python_backend_shm_region_"


def load_library(install: TritonInstall) -> ctypes.CDLL:
    """Load ``libtritonserver`` once per process, preloading bundled dependencies first."""
    if install.library in _LOADED:
        return _LOADED[install.library]
    if install.libs_dir is not None:
        pending = sorted(p for p in install.libs_dir.glob("*.so*") if p != install.library)
        # Dependencies among the bundled libs are unknown here: load what loads, retry the rest.
        while pending:
            failed = []
            for path in pending:
                try:
                    ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    failed.append(path)
            if len(failed) == len(pending):
                log.debug("bundled libraries that did not preload: %s", ", ".join(p.name for p in failed))
                break
            pending = failed
    try:
        lib = ctypes.CDLL(str(install.library), mode=ctypes.RTLD_GLOBAL)
    except OSError as exc:
        raise ConfigError(
            f"cannot load {install.library} (from {install.source}): {exc}",
            hint="run `dyntriton doctor`; a missing system library must be installed",
        ) from exc
    _LOADED[install.library] = lib
    return lib


def libpython_dir() -> Path | None:
    """Folder holding ``libpython3.X.so.1.0`` for this interpreter, or None if it is not a shared build."""
    name = sysconfig.get_config_var("INSTSONAME") or f"libpython{PY_VERSION}.so.1.0"
    for folder in (sysconfig.get_config_var("LIBDIR"), os.path.join(sys.base_prefix, "lib")):
        if folder and (Path(folder) / name).exists():
            return Path(folder)
    return None


def python_backend_problem(install: TritonInstall) -> str | None:
    """Why the python backend cannot run in this interpreter, with the fix; None when it can."""
    if not (install.backends_dir / "python" / "libtriton_python.so").exists():
        return f"{install.source} has no python backend in {install.backends_dir / 'python'}"
    if install.stub is None:
        return (
            f"{install.source} has no python backend stub for Python {PY_VERSION} "
            f"(looked in {install.home / 'python_backend_stubs' / PY_VERSION}); "
            "use a Python version the distribution ships a stub for"
        )
    if libpython_dir() is None:
        return (
            f"this Python {PY_VERSION} is not a shared-library build (no libpython{PY_VERSION}.so): "
            f"install the package providing it (Debian: libpython{PY_VERSION}) or use a Python built "
            "with --enable-shared"
        )
    try:
        import numpy
    except ImportError:
        return "numpy is not installed in this environment; the python backend needs it: pip install 'numpy<2'"
    if int(numpy.__version__.split(".")[0]) >= 2:
        return (
            f"numpy {numpy.__version__} is installed, but Triton 2.51's python backend stub needs numpy 1.x "
            "(outputs come back empty): pip install 'numpy<2' (the triton extra pins it)"
        )
    return None


def backends_directory(install: TritonInstall, requested: str | None = None) -> Path:
    """The backends folder to give Triton (see the module docstring)."""
    if requested:
        path = Path(requested)
        if not path.is_dir():
            raise ConfigError(f"--backend-directory {path} does not exist")
        return path
    python_dir = install.backends_dir / "python"
    if install.stub is None or (python_dir / "triton_python_backend_stub").exists():
        return install.backends_dir
    digest = hashlib.sha256(f"{install.home}:{PY_VERSION}".encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dyntriton" / "backends" / digest
    target = cache / "python"
    try:
        target.mkdir(parents=True, exist_ok=True)
        for source in (*python_dir.glob("*.so"), *python_dir.glob("*.py"), install.stub):
            destination = target / source.name
            if not destination.exists() or destination.stat().st_size != source.stat().st_size:
                tmp = destination.with_suffix(destination.suffix + f".tmp{os.getpid()}")
                shutil.copy2(source, tmp)
                os.replace(tmp, destination)
        for other in install.backends_dir.iterdir():
            link = cache / other.name
            if other.name != "python" and other.is_dir() and not link.exists():
                link.symlink_to(other)
    except OSError as exc:
        raise ConfigError(
            f"cannot prepare a python backend folder in {cache}: {exc.strerror}",
            hint="make the cache folder writable, or pass --backend-directory",
        ) from exc
    return cache


def stub_environment(install: TritonInstall, env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` whose PATH and LD_LIBRARY_PATH let Triton and its python backend stub find everything.

    For a child process (the ``tritonserver`` binary); :func:`prepare_stub_environment` applies it to this one.
    """
    result = dict(env)
    env_bin = str(Path(sys.prefix) / "bin")
    path = result.get("PATH", "").split(os.pathsep)
    if path[:1] != [env_bin]:
        result["PATH"] = os.pathsep.join([env_bin, *[p for p in path if p and p != env_bin]])
    wanted = [str(p) for p in (install.libs_dir, libpython_dir()) if p is not None]
    current = [p for p in result.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    result["LD_LIBRARY_PATH"] = os.pathsep.join([*wanted, *[p for p in current if p not in wanted]])
    return result


def prepare_stub_environment(install: TritonInstall) -> None:
    """Set PATH and LD_LIBRARY_PATH in this process so the python backend stub it starts finds everything."""
    wanted = stub_environment(install, os.environ)
    for key in ("PATH", "LD_LIBRARY_PATH"):
        os.environ[key] = wanted[key]


def _mapped_shm_names() -> set[str]:
    names: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:
            continue
        if SHM_PREFIX in text:
            names.update(line.rsplit("/", 1)[-1] for line in text.splitlines() if SHM_PREFIX in line)
    return names


def clean_stale_shm(only: set[str] | None = None) -> list[str]:
    """Remove python-backend shared-memory regions no live process maps (left by killed workers).

    :param only: restrict to these names (e.g. regions this process created).
    """
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    candidates = [p for p in shm.glob(f"{SHM_PREFIX}*") if only is None or p.name in only]
    if not candidates:
        return []
    mapped = _mapped_shm_names()
    removed = []
    for path in candidates:
        if path.name not in mapped:
            try:
                path.unlink()
                removed.append(path.name)
            except OSError:
                continue
    if removed:
        log.info("removed %d stale python backend shared-memory region(s)", len(removed))
    return removed


def shm_regions() -> set[str]:
    """Names of the python backend regions present now."""
    shm = Path("/dev/shm")
    return {p.name for p in shm.glob(f"{SHM_PREFIX}*")} if shm.is_dir() else set()
