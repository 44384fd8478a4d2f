"""epp servers: Envoy ext_proc (gRPC) and HTTP."""
