"""The request plane's liveness state machine: when a connected peer counts as unresponsive.

One :class:`Liveness` per peer a transport client talks to. It never reads a socket or starts a
timer: the transport reports signs of life (:meth:`Liveness.alive`) and calls :meth:`Liveness.tick`
every :attr:`Liveness.interval` (``heartbeat / 4``) seconds, then does what the returned
:class:`Tick` says. Time comes from an injected clock (the event loop's ``time`` in production, a
fake one in unit tests). The rules (the contract of :class:`~dynamo_triton.transport.LivenessReporting`):

- a sign of life is anything the peer sent or took from us; the first one after the peer was
  unresponsive makes it healthy again;
- after ``interval`` s of quiet the transport pings the peer (once per quiet spell, or on every
  quiet tick with ``repeat_pings``: a transport whose pings may be lost);
- after ``heartbeat`` s of quiet the peer is *unresponsive* (reported once, as ``Tick.UNRESPONSIVE``:
  the transport fails the calls the contract says);
- while unresponsive, ``Tick.PROBE`` comes at most once per ``heartbeat`` s (a transport able to try
  a fresh path to the peer does so);
- an unresponsive peer with no call left is forgotten after :data:`FORGET_AFTER` s (:meth:`forgotten`);
- a tick that comes more than two intervals late means this process's own loop was blocked: the
  quiet is no evidence against the peer, so the quiet timer restarts (the verdict stays).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

__all__ = ["FORGET_AFTER", "Liveness", "Tick"]

#: Seconds an unresponsive peer with no call in flight is kept (and probed) before it is forgotten.
FORGET_AFTER = 60.0


class Tick(enum.IntFlag):
    """What a transport does after a :meth:`Liveness.tick` (several may be set)."""

    NOTHING = 0
    #: Send the peer a ping (its answer is a sign of life).
    PING = enum.auto()
    #: The peer just became unresponsive: fail its calls as the transport contract says.
    UNRESPONSIVE = enum.auto()
    #: The peer is unresponsive: try a fresh path to it if the transport can.
    PROBE = enum.auto()


class Liveness:
    """The liveness of one peer; see the module docstring for the rules.

    :param heartbeat: seconds without a sign of life before the peer is unresponsive (> 0).
    :param clock: seconds on a monotonic clock (``loop.time``); read once per call of each method.
    :param repeat_pings: ping on every quiet tick, not once per quiet spell.
    """

    __slots__ = (
        "_last_tick",
        "clock",
        "heartbeat",
        "interval",
        "last_sign",
        "pinged",
        "probed_at",
        "repeat_pings",
        "unresponsive_since",
    )

    def __init__(self, heartbeat: float, clock: Callable[[], float], *, repeat_pings: bool = False):
        if heartbeat <= 0:
            raise ValueError(f"heartbeat must be > 0 s, got {heartbeat!r} (a transport without heartbeats has none)")
        self.heartbeat, self.interval, self.clock = heartbeat, heartbeat / 4, clock
        self.repeat_pings = repeat_pings
        now = clock()
        #: When the peer last showed a sign of life (or the quiet timer last restarted).
        self.last_sign = now
        #: When the peer became unresponsive, or None while it is healthy.
        self.unresponsive_since: float | None = None
        self.pinged = False
        self.probed_at = -math.inf
        self._last_tick = now

    @property
    def unresponsive(self) -> bool:
        """True from ``Tick.UNRESPONSIVE`` until the next sign of life."""
        return self.unresponsive_since is not None

    def alive(self) -> float | None:
        """The peer showed a sign of life now. Returns how long it had been unresponsive when this
        ends that (for the transport to log), else None."""
        now = self.clock()
        self.last_sign, self.pinged = now, False
        since = self.unresponsive_since
        if since is None:
            return None
        self.unresponsive_since = None
        return now - since

    def silent_for(self) -> float:
        """Seconds since the last sign of life."""
        return self.clock() - self.last_sign

    def tick(self) -> Tick:
        """Advance the state machine; returns what the transport must do now."""
        now = self.clock()
        if now - self._last_tick > 2 * self.interval:
            self.last_sign, self.pinged = now, False  # our loop was blocked: no evidence either way
        self._last_tick = now
        quiet = now - self.last_sign
        todo = Tick.NOTHING
        if quiet >= self.interval and (self.repeat_pings or not self.pinged):
            self.pinged = True
            todo |= Tick.PING
        if quiet >= self.heartbeat and self.unresponsive_since is None:
            self.unresponsive_since = now
            todo |= Tick.UNRESPONSIVE
        if self.unresponsive_since is not None and now - self.probed_at >= self.heartbeat:
            self.probed_at = now
            todo |= Tick.PROBE
        return todo

    def forgotten(self, *, idle: bool) -> bool:
        """True when the peer has been unresponsive for :data:`FORGET_AFTER` s and ``idle`` (no call left)."""
        since = self.unresponsive_since
        return idle and since is not None and self.clock() - since > FORGET_AFTER
