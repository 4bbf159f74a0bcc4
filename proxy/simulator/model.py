"""Values and small stateful helpers of the Genesys Cloud simulator."""

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

WINDOW_SECONDS = 60.0


@dataclass(frozen=True)
class SimClient:
    """An OAuth client registered with the simulated login service of one region."""

    client_id: str
    client_secret: str = field(repr=False)
    domain: str
    org_id: str
    org_name: str
    token_lifetime: float


@dataclass(frozen=True)
class SeenRequest:
    """One API request as the simulator received it, and the status it answered."""

    method: str
    domain: str
    path: str
    query_string: str
    # Left out of the repr: they hold the bearer token.
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    body_length: int
    body_sha256: str
    client_id: str | None
    status: int
    # The request target exactly as it arrived (path, `?` and query, nothing decoded), and the
    # header lines as bytes: what a byte-for-byte test compares.
    target: str = ""
    raw_headers: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False)

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(slots=True)
class RateWindow:
    """A fixed rate-limit window, as Genesys counts one: it starts with the first request after
    the previous one ended, and holds `allowed` requests until it ends."""

    start: float = -math.inf
    count: int = 0

    def admit(self, now: float, allowed: int | None, seconds: float) -> tuple[bool, int, int]:
        """Count one request if the window has room: (admitted, count, seconds to reset).

        A refused request is not counted: Genesys did not process it.
        """
        if now >= self.start + seconds:
            self.start = now
            self.count = 0
        admitted = allowed is None or self.count < allowed
        if admitted:
            self.count += 1
        return admitted, self.count, _whole_seconds(self.start + seconds - now)


@dataclass(frozen=True)
class ResourceLimit:
    """A limit of one resource (a path prefix, optionally one method), counted per OAuth client
    over all of its tokens, as some Genesys limits are: more tokens do not lift it."""

    path_prefix: str
    allowed: int
    window_seconds: float = WINDOW_SECONDS
    method: str | None = None

    def __post_init__(self) -> None:
        if not self.path_prefix.startswith("/api/v2/"):
            raise ValueError(f"a limited path must start with /api/v2/, not {self.path_prefix}")
        if self.allowed < 1:
            raise ValueError(f"a resource limit must allow at least 1 request, got {self.allowed}")
        if self.window_seconds <= 0:
            raise ValueError(f"a resource window must be positive, got {self.window_seconds}")

    def applies_to(self, method: str, path: str) -> bool:
        return path.startswith(self.path_prefix) and self.method in (None, method)


@dataclass(slots=True)
class IssuedToken:
    """What the simulator knows about one access token; the token itself is the dict key."""

    client_id: str
    domain: str
    org_id: str
    expires_at: float
    revoked: bool = False
    window: RateWindow = field(default_factory=RateWindow)


@dataclass(slots=True)
class Fault:
    """A scripted failure: the next `remaining` matching requests answer `status` after `delay`.

    A fault with status 200 and no body is a pure delay: the request then proceeds normally.
    With a body, status 200 answers that body (a malformed token answer, say).
    """

    status: int
    delay: float
    retry_after: int | None
    body: bytes | None
    content_type: str
    remaining: int
    client_id: str | None

    @property
    def passes_through(self) -> bool:
        return self.status == 200 and self.body is None


class FaultQueue:
    """Faults in injection order; each request consumes at most one."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        if fault.remaining < 1:
            raise ValueError(f"fault count must be at least 1, got {fault.remaining}")
        if not 100 <= fault.status <= 599:
            raise ValueError(f"fault status must be an HTTP status, got {fault.status}")
        if fault.delay < 0:
            raise ValueError(f"fault delay must not be negative, got {fault.delay}")
        self._faults.append(fault)

    def take(self, client_id: str | None) -> Fault | None:
        """Consume one use of the first fault aimed at `client_id` (or at everyone)."""
        # Synchronous on purpose: concurrent requests must not both take a fault's last use.
        for fault in self._faults:
            if fault.client_id is None or fault.client_id == client_id:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def clear(self) -> None:
        self._faults.clear()


class SlidingWindowLimiter:
    """Allows `limit` events per key within any trailing window of `WINDOW_SECONDS`."""

    def __init__(self, limit: int, clock: Callable[[], float]) -> None:
        if limit < 1:
            raise ValueError(f"rate limit must be at least 1 per minute, got {limit}")
        self.limit = limit
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def acquire(self, key: str) -> int | None:
        """Record an event for `key` and return None, or return the seconds until one is allowed."""
        now = self._clock()
        events = self._events.setdefault(key, deque())
        while events and events[0] <= now - WINDOW_SECONDS:
            events.popleft()
        if len(events) >= self.limit:
            return _whole_seconds(events[0] + WINDOW_SECONDS - now)
        events.append(now)
        return None


def _whole_seconds(seconds: float) -> int:
    """Seconds for a header: rounded up, at least 1, so waiting that long always suffices."""
    return max(1, math.ceil(seconds))
