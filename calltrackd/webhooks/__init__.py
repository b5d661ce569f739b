"""Webhooks and the outbox: payloads, signing, backoff, destinations and the delivery
worker that sends every kind of outbox row (webhooks, analytics, alerts)."""

from .backoff import Backoff, ExponentialJitterBackoff, RetryPolicy
from .destinations import Destination, Prepared, Request, WebhookDestination
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
    "Destination",
    "ExponentialJitterBackoff",
    "OutboxStore",
    "Prepared",
    "Request",
    "RetryPolicy",
    "SecretLookup",
    "WebhookDestination",
    "WebhookWorker",
    "build_deliveries",
    "event_body",
    "sign",
    "verify",
]
