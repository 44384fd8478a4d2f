"""Turning a request body into the token ids a pod will compute, so the picker can key its blocks.

`base` holds the `PromptTokenizer` protocol and the request shapes it reads; `simulated` is the simulator's
own tokenizer and chat rendering (bench/sim uses it too); `hf_local` a model's `tokenizer.json` and chat
template from local files; `vllm_http` a pod's `POST /tokenize` (asynchronous, a network round trip).
"""
