"""Kubernetes-shaped configuration: InferencePool, InferenceModel, EndpointPickerConfig."""
