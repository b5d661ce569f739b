"""calltrackd: call-tracking daemon (SIP B2BUA + tracking + webhooks)."""

__version__ = "0.1.0"
