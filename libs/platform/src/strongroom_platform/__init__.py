"""Shared runtime of Strongroom services: settings, clock, database, outbox, events, object store, gRPC."""
