"""The REST/JSON edge (ADR 0052): every operator RPC, transcoded from its ``google.api.http`` rule.

The edge holds no credential of its own: it forwards the caller's bearer token to the gRPC
service, which authenticates and authorizes the call exactly as it does a gRPC caller.
"""
