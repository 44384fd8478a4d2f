"""Gateway overhead and throughput benchmark: `python -m bench.overhead --help`.

nginx serves canned answers as N fast fixed "pods"; wrk sends closed-loop chat completion load directly to
a pod and through each router (epp gateway, Envoy + epp serve, sglang-router, vllm-router), one after the
other in one run; the report compares throughput, latency and router CPU per request.
"""
