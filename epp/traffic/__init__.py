"""LLM traffic management at request time, shared by both data planes.

The documents are loaded and checked by `epp.config.traffic` (`build_traffic` -> `TrafficConfig`);
`TrafficRouter` picks a provider (or a local pool) per request, `rewrite_body` applies the provider's
openAIConfig, and `resolve` holds the host override map and the upstream TLS context.
"""
