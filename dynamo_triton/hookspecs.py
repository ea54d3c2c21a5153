"""Hook specifications of dyntriton (pluggy project ``dyntriton``).

Every hook is a *registry* hook: dyntriton calls it once per plugin, right after
the plugin manager is made, with a :class:`~dynamo_triton.registry.Register` that
records which plugin provided each name. The register is typed by the kind's factory
protocol (``KVStoreRegister`` is ``Register[KVStoreFactory]``...), so mypy checks a
plugin's factory. ``register(name, factory, summary=..., settings=SettingsClass,
traits=(...))``: ``settings`` is a frozen dataclass whose fields declare their CLI
options (:mod:`dynamo_triton.settings`); the core builds it from the command line
and hands it to the factory. Hooks are synchronous and cheap: a plugin
registers names and factories; heavy imports (grpc, etcd, Triton libraries) happen
inside the factory, when a user selects that name. No hook is ``firstresult``:
every plugin's implementation is called, and two plugins registering the same
name for the same kind is an error naming both.

Implement a hook with ``@dynamo_triton.hookimpl``; see ``docs/plugins.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from dynamo_triton.registry import (
        BackendRegister,
        CommandRegister,
        DTypeRegister,
        FrontendRegister,
        KVStoreRegister,
        RouterRegister,
        TransportRegister,
    )

__all__ = ["PROJECT_NAME", "hookimpl", "hookspec"]

#: The pluggy project name, also the entry-point group plugins register under.
PROJECT_NAME = "dyntriton"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def dyntriton_register_kv_stores(register: KVStoreRegister) -> None:
    """Register key-value stores, selected with ``--store-kv NAME``.

    Called once per plugin when the plugin manager is made.

    :param register: call ``register(name, factory, summary=..., settings=Cls)`` where
        ``factory(settings: Cls) -> KVStore`` (see :mod:`dynamo_triton.kv`); without a
        settings class the factory gets a :class:`~dynamo_triton.kv.StoreSettings`.
        The factory does no I/O; connecting happens in the store's coroutines. The trait
        ``process-local`` says only this process sees the store (``serve`` then runs its
        worker in-process).
    :return: nothing; every plugin's implementation is called.
    """


@hookspec
def dyntriton_register_transports(register: TransportRegister) -> None:
    """Register request-plane transports, selected with ``--transport NAME``.

    :param register: call ``register(name, factory, summary=..., settings=Cls)`` where
        ``factory(settings: Cls) -> Transport`` (see :mod:`dynamo_triton.transport`) and ``Cls``
        extends :class:`~dynamo_triton.transport.TransportSettings` (TLS, token, heartbeat).
        The trait ``in-process`` marks a transport without sockets (``serve`` uses it with
        a process-local store).
    :return: nothing; every plugin's implementation is called.
    """


@hookspec
def dyntriton_register_dtypes(register: DTypeRegister) -> None:
    """Register tensor datatypes beyond the built-in KServe table.

    Each process builds its table once (``Plugins.dtype_table()``); validation, the worker,
    the codecs and ``dyntriton infer`` all use it, so load the plugin in the frontend and
    every worker.

    :param register: call ``register(kserve_name, DType(...))`` with a
        :class:`dynamo_triton.dtypes.DType` giving the KServe, numpy, Triton ``TYPE_*``
        and Dynamo names. A datatype Triton does not know names a core ``carrier`` of the
        same itemsize (``carrier="UINT8"``, Triton name ``TYPE_UINT8``): models declare the
        carrier type and the worker relabels tensors to it. Registering a name the table
        already has, or breaking a carrier rule, is an error naming the plugin.
    :return: nothing; every plugin's implementation is called.
    """


@hookspec
def dyntriton_register_backends(register: BackendRegister) -> None:
    """Register inference backends, selected with ``--backend NAME``.

    :param register: call ``register(name, factory, summary=..., settings=Cls)`` where
        ``factory(settings: Cls) -> Backend`` (see :mod:`dynamo_triton.backend`) and ``Cls``
        extends :class:`~dynamo_triton.backend.BackendSettings`.
        Loading native libraries happens in ``Backend.start``, never at registration.
    :return: nothing; every plugin's implementation is called.
    """


@hookspec
def dyntriton_register_frontends(register: FrontendRegister) -> None:
    """Register protocol frontends (KServe gRPC, HTTP...) that ``frontend``/``serve`` start (``--frontend NAME``).

    :param register: call ``register(name, factory, summary=..., settings=Cls)`` where
        ``factory(settings: Cls, service: InferenceService) -> Frontend``
        (see :mod:`dynamo_triton.frontend`) and ``Cls`` extends
        :class:`~dynamo_triton.frontend.FrontendSettings` (server name, TLS), declaring its
        own ``host`` and ``port`` options. The trait ``default`` puts it in the list
        started when no ``--frontend`` is given.
    :return: nothing; every plugin's implementation is called.
    """


@hookspec
def dyntriton_register_routers(register: RouterRegister) -> None:
    """Register routers, the policy choosing which live instance serves a request (``--router NAME``).

    :param register: call ``register(name, factory, summary=..., settings=Cls)`` where
        ``factory(settings: Cls | None) -> Router`` (see :mod:`dynamo_triton.runtime.routing`).
        A router's ``pick`` runs on the event loop for every request: keep it cheap.
    :return: nothing; every plugin's implementation is called.
    """


@hookspec
def dyntriton_register_commands(register: CommandRegister) -> None:
    """Register extra ``dyntriton`` CLI commands.

    :param register: call ``register(name, loader, summary=...)`` where
        ``loader() -> click.Command`` imports the command's module only when the
        command is run, so ``dyntriton --help`` stays fast and survives a broken plugin.
        ``summary`` is the one line shown in ``dyntriton --help``.
    :return: nothing; every plugin's implementation is called.
    """
