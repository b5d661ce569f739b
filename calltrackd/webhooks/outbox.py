"""The worker's vocabulary: the part of the store it uses, and what an attempt came to."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from calltrackd.tracking.model import WebhookDelivery

__all__ = ["DeliveryInFlightError", "DeliveryOutcome", "OutboxStore", "Result", "SecretLookup"]

Result = Literal["ok", "retry", "failed"]
# (tracker id, endpoint url) -> the endpoint's current secret; None once it left the config.
SecretLookup = Callable[[str, str], str | None]


class OutboxStore(Protocol):
    """The part of the store the worker uses (calltrackd/store implements it)."""

    async def due_deliveries(self, now: float, limit: int) -> list[WebhookDelivery]:
        """Pending rows with next_attempt_at <= now, oldest first. A store may also take
        `exclude_urls` (rows of those urls are left out); the worker then passes the
        destinations whose ready queues are full."""
        ...

    async def mark_delivered(self, delivery_id: str, now: float) -> None: ...

    async def reschedule(
        self, delivery_id: str, attempts: int, next_attempt_at: float, error: str
    ) -> None: ...

    async def mark_failed(self, delivery_id: str, attempts: int, error: str) -> None: ...

    async def pending_count(self) -> int: ...

    async def unlease(self, delivery_ids: Sequence[str]) -> None:
        """Rows handed out by `due_deliveries` that will not be sent now: due again."""
        ...


class DeliveryInFlightError(RuntimeError):
    """`deliver_once` was asked for a delivery that is being sent or recorded right now."""

    def __init__(self, delivery_id: str) -> None:
        super().__init__(f"delivery {delivery_id} is in flight")
        self.delivery_id = delivery_id


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    """What one attempt came to for one row."""

    delivery_id: str
    result: Result
    attempts: int  # attempts made so far, this one included
    status: int | None = None  # the receiver's HTTP status; None if it never answered
    error: str | None = None
    next_attempt_at: float | None = None  # set when result == "retry"
    recorded: bool = True  # False: the store write failed and is retried before next poll
    kind: str = "webhook"
