"""Provider fallback under a fault: epp gateway vs LiteLLM's proxy vs direct.

`python -m bench.litellm_compare`: two simulated providers A and B sit behind counting taps; a 50/50 route
with outlier detection / cooldown and a B -> A fallback runs through each system while B answers 503 for a
window. The report gives client-visible errors, requests that reached B while broken, B's recovery time and
added latency against direct.
"""
