"""One backoff policy for every wait on something that is down: the database or the broker at start,
a publish across a connection loss, a worker waiting for its database to come back."""

from __future__ import annotations

from collections.abc import Callable

import structlog
import tenacity

log = structlog.get_logger(__name__)


def backoff(
    what: str,
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    initial: float = 0.5,
    maximum: float = 30.0,
    stop: Callable[[tenacity.RetryCallState], bool] = tenacity.stop_never,
    wait: Callable[[tenacity.RetryCallState], float] | None = None,
) -> tenacity.AsyncRetrying:
    """`async for attempt in backoff("database"): with attempt: ...`: tries again on `retry_on`, waiting
    `initial` seconds, then twice as long each time up to `maximum`, logging each failure; after `stop`
    the last error is raised."""
    return tenacity.AsyncRetrying(
        retry=tenacity.retry_if_exception_type(retry_on),
        wait=wait or tenacity.wait_exponential(multiplier=initial, min=initial, max=maximum),
        stop=stop,
        before_sleep=lambda state: log.warning(
            "failed, retrying",
            what=what,
            attempt=state.attempt_number,
            error=repr(state.outcome.exception()) if state.outcome else None,
            retry_in=round(state.next_action.sleep, 2) if state.next_action else None,
        ),
        reraise=True,
    )
