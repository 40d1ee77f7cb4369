"""The alert pipeline (ADR 0037): ``alert-raised`` events become in-app messages and webhook and
email deliveries, which a worker drains from a durable queue table."""
