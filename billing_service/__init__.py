"""A standalone Stripe billing service: catalog, checkout, webhook ledger, entitlements, quotas."""

__version__ = "0.1.0"
