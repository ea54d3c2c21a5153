"""The frontend-side routing core: the InferenceService frontends serve from.

It turns a model name and the request bytes into a call to one live instance
over the instance's transport, retrying once on another instance when the
first fails before answering. Requests of a sequence to a model with
``sequence_batching`` go through the :class:`SequenceRouter` instead (sticky, never
retried elsewhere mid-sequence). Tensor bytes pass through untouched.

Instances whose transport reports them unresponsive (heartbeats unanswered: a frozen
worker) are passed over by every policy and come back when they answer again; their
cards stay. A request the unresponsive worker never read is sent elsewhere (the retry
rule above); one it read ends at its deadline, or with UNAVAILABLE when it has none.
Error texts name the model and what happened, never a worker's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import NoReturn

from tritonclient.grpc import service_pb2

from dynamo_triton.dtypes import DTypeTable, default_table
from dynamo_triton.errors import (
    DeadlineExceededError,
    DyntritonError,
    ModelNotFoundError,
    NoInstanceError,
    PeerGoneError,
    PeerUnresponsiveError,
)
from dynamo_triton.frontend import ServedModel
from dynamo_triton.runtime.admission import Admission, AdmissionSettings, QueueCollector, queue_policy
from dynamo_triton.runtime.discovery import Instance, ModelTable
from dynamo_triton.runtime.frontend_metrics import FrontendMetrics
from dynamo_triton.runtime.routing import Policy
from dynamo_triton.runtime.sequence_routing import SequenceRouter
from dynamo_triton.runtime.sequences import SequenceStep, idle_seconds
from dynamo_triton.runtime.shared_memory import SharedMemoryRegistry
from dynamo_triton.runtime.statistics import merge_statistics
from dynamo_triton.runtime.tracing import FrontendTrace, RequestTracing
from dynamo_triton.transport import Transport, TransportClient, UnaryCalling, call_unary, liveness_check

__all__ = ["RoutingService"]

log = logging.getLogger(__name__)

#: Endpoint names a worker's transport server answers.
INFER_ENDPOINT = "infer"
STATISTICS_ENDPOINT = "statistics"


def _queue_deadline(deadline: float | None, queue_timeout: float | None) -> float | None:
    """The time by which a request must be sent to a worker: its deadline, or sooner with a queue timeout."""
    if queue_timeout is None:
        return deadline
    limit = time.monotonic() + queue_timeout
    return limit if deadline is None else min(deadline, limit)


class RoutingService:
    """InferenceService over a :class:`ModelTable`.

    :param transports: builds a Transport by plugin name (the name cards carry).
    :param policy: the router policy.
    :param metrics: the frontend process's metrics, shared by every protocol frontend.
    :param dtypes: the dtype table (core rows plus plugin rows) requests are validated with.
    :param admission: admission control's knobs (see :mod:`dynamo_triton.runtime.admission`).
    """

    def __init__(
        self,
        table: ModelTable,
        policy: Policy,
        transports: Callable[[str], Transport],
        *,
        metrics: FrontendMetrics | None = None,
        dtypes: DTypeTable | None = None,
        admission: AdmissionSettings | None = None,
    ):
        self._table, self._policy, self._transports = table, policy, transports
        self.metrics = metrics or FrontendMetrics()
        self.dtypes = dtypes or default_table()
        self._clients: dict[str, TransportClient] = {}
        #: Triton's system shared-memory regions of this host (None: the extension is not offered).
        self.shared_memory: SharedMemoryRegistry | None = None
        self._liveness: dict[str, Callable[[str], bool]] = {}
        self._unary_calls: dict[str, Callable[..., Awaitable[bytes | None]]] = {}
        self._policies: dict[str, tuple[ServedModel, tuple[int, float | None, int, bool]]] = {}  # per served model
        self._seen: set[str] = set()
        self._addresses: set[str] = set()  # every worker address seen, kept out of error texts
        self._served: dict[str, ServedModel] | None = None
        #: Models unloaded on purpose through this frontend (kept by its ClusterRepository): errors say so.
        self.unloaded: set[str] = set()
        self.sequences = SequenceRouter(table, self._send, unresponsive=self.unresponsive)
        self.admission = Admission(admission, unresponsive=self.unresponsive)
        #: OpenTelemetry tracing of requests (off until configured: one boolean on the hot path).
        self.tracing = RequestTracing()
        self.metrics.registry.register(QueueCollector(self.admission))
        table.subscribe(self.invalidate)

    def invalidate(self) -> None:
        """Called by the table after every change: new instances take waiting requests at once."""
        self._served = None
        self._addresses.update(inst.address for inst in self._table.all_instances())
        for name in self._table.model_names():
            if self.admission.waiting(name):
                self.admission.kick(name, self._table.instances(name), self._policy)

    def _client(self, transport: str) -> TransportClient:
        client = self._clients.get(transport)
        if client is None:
            client = self._clients[transport] = self._transports(transport).client()
            self._liveness[transport] = liveness_check(client)
        return client

    def unresponsive(self, instance: Instance) -> bool:
        """The instance's transport reports it connected but silent (never true for transports without heartbeats)."""
        check = self._liveness.get(instance.card.transport)
        if check is None:
            self._client(instance.card.transport)
            check = self._liveness[instance.card.transport]
        return check(instance.address)

    def _scrubbed(self, exc: DyntritonError) -> DyntritonError:
        """``exc`` with worker addresses taken out of its message (clients see the message)."""
        text = exc.message
        for address in self._addresses:
            if address in text:
                text = text.replace(f" at {address}", "").replace(address, "the worker")
        if text != exc.message:
            exc.message, exc.args = text, (text,)
        return exc

    def _served_models(self) -> dict[str, ServedModel]:
        if self._served is None:
            served: dict[str, ServedModel] = {}
            for name in self._table.model_names():
                instances = sorted(self._table.instances(name), key=lambda inst: inst.instance_id)
                first = instances[0]
                served[name] = ServedModel(
                    name=name,
                    version=first.card.version,
                    config=first.config,
                    metadata=first.metadata,
                    decoupled=first.card.decoupled,
                    instances=len(instances),
                    server_version=str(first.card.worker.get("server_version", "")),
                )
            self._seen.update(served)
            self._served = served
        return self._served

    def on_host(self, name: str, host: str) -> bool:
        """True when model ``name`` has live instances and every one runs on shared-memory host ``host``
        (their cards' ``worker.shm_host``): they can be handed shared-memory regions by reference."""
        instances = self._table.instances(name)
        return bool(instances) and all(inst.card.worker.get("shm_host") == host for inst in instances)

    # -- InferenceService ------------------------------------------------------------------------
    def ready(self) -> bool:
        return bool(self._served_models())

    def models(self) -> list[ServedModel]:
        return list(self._served_models().values())

    def model(self, name: str, version: str = "") -> ServedModel:
        served = self._served_models().get(name)
        if served is None:
            if name in self.unloaded:
                raise NoInstanceError(
                    f"model '{name}' has no live instance: it was unloaded through model control",
                    hint=f"load it again (dyntriton model load {name}, or RepositoryModelLoad) to serve it",
                )
            if name in self._seen:
                raise NoInstanceError(
                    f"model '{name}' has no live instance right now",
                    hint="start a worker that serves it, or load it (dyntriton model load) if it was unloaded",
                )
            known = ", ".join(sorted(self._served_models())) or "none"
            raise ModelNotFoundError(f"Request for unknown model: '{name}' is not found (served models: {known})")
        if version and version != served.version:
            raise ModelNotFoundError(
                f"Request for unknown model: '{name}' version {version} is not found (served version: {served.version})"
            )
        return served

    async def infer(
        self,
        name: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        sequence: SequenceStep | None = None,
        queue_timeout: float | None = None,
        priority: int = 0,
        trace: FrontendTrace | None = None,
    ) -> AsyncIterator[bytes]:
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            if sequence is not None:
                served = self._served_models().get(name)
                idle = None if served is None else idle_seconds(served.config)
                if idle is not None:
                    async with contextlib.aclosing(
                        self.sequences.infer(name, payload, sequence, idle, deadline)
                    ) as steps:
                        async for chunk in steps:
                            yield chunk
                    return
            tried: set[str] = set()
            failure: DyntritonError | None = None
            queueing = self._queueing(name, deadline, queue_timeout, priority)
            for _attempt in range(2):
                candidates = [
                    inst
                    for inst in self._table.instances(name)
                    if inst.instance_id not in tried and not self.unresponsive(inst)
                ]
                if not candidates:
                    break
                instance = await self._admit(name, candidates, deadline, queueing, trace)
                tried.add(instance.instance_id)
                if trace is not None:
                    trace.admitted()
                    sending = trace.call(instance.instance_id, instance.address, payload)
                sent = time.monotonic()
                remaining = None if deadline is None else deadline - sent
                answered = False
                elapsed: float | None = None
                try:
                    stream = self._client(instance.card.transport).call(
                        instance.address, INFER_ENDPOINT, payload if trace is None else sending, timeout=remaining
                    )
                    async for chunk in stream:
                        answered = True
                        yield chunk
                    elapsed = time.monotonic() - sent
                    return
                except DeadlineExceededError as exc:
                    raise self._late(name, timeout, instance) from exc
                except DyntritonError as exc:
                    if self._attempt_failed(name, instance, exc, answered):
                        return
                    failure = exc
                finally:
                    self.admission.release(name, instance, self._table.instances(name), self._policy, elapsed)
                    if trace is not None and elapsed is not None:
                        trace.call_ended("OK")
            self._none_took(name, failure)
        except DyntritonError as exc:
            self._scrubbed(exc)
            raise

    async def infer_unary(
        self,
        name: str,
        payload: bytes,
        *,
        timeout: float | None = None,
        queue_timeout: float | None = None,
        priority: int = 0,
    ) -> bytes | None:
        """:meth:`infer` for a request of a non-decoupled model outside a sequence: its one response.

        The same admission, retry, deadline and error rules as :meth:`infer`, without the async
        generator layers (the transport's :func:`~dynamo_triton.transport.call_unary`). None: the
        worker's stream ended without a response.
        """
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            failure: DyntritonError | None = None
            queueing = self._queueing(name, deadline, queue_timeout, priority)
            instances = self._table.instances(name)
            tried = ""
            for _attempt in range(2):
                candidates = [inst for inst in instances if inst.instance_id != tried and not self.unresponsive(inst)]
                if not candidates:
                    break
                instance = await self._admit(name, candidates, deadline, queueing)
                tried = instance.instance_id
                sent = time.monotonic()
                elapsed: float | None = None
                try:
                    answer = await self._unary_call(instance.card.transport)(
                        instance.address, INFER_ENDPOINT, payload, timeout=None if deadline is None else deadline - sent
                    )
                    elapsed = time.monotonic() - sent
                    return answer
                except DeadlineExceededError as exc:
                    raise self._late(name, timeout, instance) from exc
                except DyntritonError as exc:
                    self._attempt_failed(name, instance, exc, False)
                    failure = exc
                finally:
                    instances = self._table.instances(name)
                    self.admission.release(name, instance, instances, self._policy, elapsed)
            self._none_took(name, failure)
        except DyntritonError as exc:
            self._scrubbed(exc)
            raise

    def _queueing(
        self, name: str, deadline: float | None, queue_timeout: float | None, priority: int
    ) -> tuple[float | None, int, int]:
        """How a request of ``name`` waits for a slot, by Triton's queue policy: ``(the time by which
        it must be sent, its priority level, the model's queue bound for the cluster)``. The request's
        own timeout counts where the policy allows an override, else the policy's default timeout."""
        max_queue, policy_timeout, default_priority, overridable = self._queue_policy(name)
        if queue_timeout is None or not overridable:
            queue_timeout = policy_timeout
        return _queue_deadline(deadline, queue_timeout), priority or default_priority, max_queue

    async def _admit(
        self,
        name: str,
        candidates: list[Instance],
        deadline: float | None,
        queueing: tuple[float | None, int, int],
        trace: FrontendTrace | None = None,
    ) -> Instance:
        """A slot on one of ``candidates`` (see :class:`Admission`), unless the caller's deadline has passed."""
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceededError(f"deadline exceeded before model '{name}' could be reached")
        if trace is not None:
            trace.admission_started()
        queue_deadline, level, max_queue = queueing
        return await self.admission.admit(
            name, candidates, self._policy, deadline=queue_deadline, priority=level, max_queue=max_queue
        )

    def _unary_call(self, transport: str) -> Callable[..., Awaitable[bytes | None]]:
        call = self._unary_calls.get(transport)
        if call is None:
            client = self._client(transport)
            call = self._unary_calls[transport] = (
                client.call_unary if isinstance(client, UnaryCalling) else functools.partial(call_unary, client)
            )
        return call

    def _attempt_failed(self, name: str, instance: Instance, exc: DyntritonError, answered: bool) -> bool:
        """An attempt on ``instance`` raised ``exc``: True when the request is complete anyway, False to
        try another instance; raises when the request must end with an error."""
        if exc.status != "UNAVAILABLE":
            raise exc
        if isinstance(exc, PeerGoneError):
            self._table.forget(instance)
        if answered and not instance.card.decoupled:
            # A non-decoupled model answers exactly once and that answer arrived: only the
            # end of the stream was lost with the worker. The request is complete.
            log.info("model %r: instance %s went away after its answer (%s)", name, instance.address, exc)
            return True
        if isinstance(exc, PeerUnresponsiveError) and exc.started:
            raise NoInstanceError(
                f"the worker running this request of model '{name}' stopped responding; the request may have run there"
            ) from exc
        if answered:
            raise NoInstanceError(
                f"the instance serving model '{name}' failed after answering part of the request: {exc}"
            ) from exc
        log.info("model %r: instance %s failed before answering (%s); retrying", name, instance.address, exc)
        return False

    def _none_took(self, name: str, failure: DyntritonError | None) -> NoReturn:
        """No instance took the request (after ``failure``, or none could be tried): raise why."""
        if failure is None:
            self.model(name)  # unknown model: NOT_FOUND rather than UNAVAILABLE
        if failure is None and any(self.unresponsive(inst) for inst in self._table.instances(name)):
            raise NoInstanceError(
                f"no instance of model '{name}' is responding right now: its workers stopped answering "
                "(frozen or overloaded); retry shortly"
            )
        detail = f": {failure.message}" if failure else ""
        raise NoInstanceError(f"no live instance of model '{name}' could take the request{detail}")

    def _queue_policy(self, name: str) -> tuple[int, float | None, int, bool]:
        """Triton's queue policy of ``name`` for the whole cluster (see :func:`queue_policy`): its
        ``max_queue_size`` counts per worker."""
        served = self._served_models().get(name)
        if served is None:
            return 0, None, 0, True
        cached = self._policies.get(name)
        if cached is None or cached[0] is not served:
            max_queue, timeout, priority, overridable = queue_policy(served.config)
            cached = self._policies[name] = (served, (max_queue * served.instances, timeout, priority, overridable))
        return cached[1]

    def _late(self, name: str, timeout: float | None, instance: Instance) -> DeadlineExceededError:
        what = f"deadline of {timeout:g} s exceeded" if timeout is not None else "deadline exceeded"
        if self.unresponsive(instance):
            return DeadlineExceededError(
                f"{what}: the worker running this request of model '{name}' stopped responding"
            )
        return DeadlineExceededError(f"{what} waiting for model '{name}'")

    async def _send(self, instance: Instance, payload: bytes, deadline: float | None) -> AsyncGenerator[bytes, None]:
        """One call to ``instance``; an instance whose connection fails leaves the table."""
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError(f"deadline exceeded before model '{instance.card.model}' could be reached")
        instance.outstanding += 1
        try:
            call = self._client(instance.card.transport).call(
                instance.address, INFER_ENDPOINT, payload, timeout=remaining
            )
            async with contextlib.aclosing(call) as stream:  # type: ignore[type-var]
                async for chunk in stream:
                    yield chunk
        except DeadlineExceededError as exc:
            raise self._late(instance.card.model, remaining, instance) from exc
        except PeerGoneError:
            self._table.forget(instance)
            raise
        finally:
            instance.outstanding -= 1

    async def statistics(self, name: str = "") -> service_pb2.ModelStatisticsResponse:
        if name:
            self.model(name)
        instances: dict[str, Instance] = {}
        for inst in self._table.all_instances():
            if not name or inst.card.model == name:
                instances.setdefault(inst.address, inst)

        async def one(inst: Instance) -> service_pb2.ModelStatisticsResponse | None:
            try:
                chunks = [
                    chunk
                    async for chunk in self._client(inst.card.transport).call(
                        inst.address, STATISTICS_ENDPOINT, name.encode(), timeout=5.0
                    )
                ]
            except DyntritonError as exc:
                log.warning("statistics from %s failed: %s", inst.address, exc)
                return None
            return service_pb2.ModelStatisticsResponse.FromString(b"".join(chunks))

        results = await asyncio.gather(*(one(inst) for inst in instances.values()))
        served = {model.name for model in self.models()}
        return merge_statistics([r for r in results if r is not None], keep=served if not name else {name})

    async def close(self) -> None:
        """Close every transport client."""
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
