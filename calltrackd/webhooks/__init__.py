"""Webhooks (SPEC §5): payloads, signing, backoff, and the outbox delivery worker."""

from .backoff import Backoff, ExponentialJitterBackoff, RetryPolicy
from .payload import EVENTS, build_deliveries, event_body
from .signing import SIGNATURE_HEADER, sign, verify
from .worker import (
    DeliveryInFlightError,
    DeliveryOutcome,
    OutboxStore,
    SecretLookup,
    WebhookWorker,
)

__all__ = [
    "EVENTS",
    "SIGNATURE_HEADER",
    "Backoff",
    "DeliveryInFlightError",
    "DeliveryOutcome",
    "ExponentialJitterBackoff",
    "OutboxStore",
    "RetryPolicy",
    "SecretLookup",
    "WebhookWorker",
    "build_deliveries",
    "event_body",
    "sign",
    "verify",
]
