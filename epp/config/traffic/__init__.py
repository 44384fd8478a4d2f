"""The LLM traffic documents (LLMProvider, LLMRoute, DestinationRule, VirtualService): models, loading and
the checks across documents. The route choice at request time is `epp.traffic`."""
