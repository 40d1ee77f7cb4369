"""Observability of every Strongroom process, the agent included (ADR 0039).

Tracing (``tracing``), metrics (``metrics``), JSON logs carrying trace ids (``logs``), trace
context over gRPC metadata (``grpc_tracing``) and Kafka headers (``propagation``), and the one
call a process's entry point makes to switch all of it on (``process.start``). It depends on
OpenTelemetry, prometheus-client and grpcio only, so the agent can use it as well as the services.
"""
