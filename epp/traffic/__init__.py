"""LLM traffic management: ASM's LLMProvider/LLMRoute plus Istio DestinationRule/VirtualService documents.

`build_traffic` validates the documents into a `TrafficConfig`; `TrafficRouter` picks a provider (or a
local pool) per request; `rewrite_body` applies the provider's openAIConfig; `resolve` holds the host
override map and the upstream TLS context.
"""
