"""Built-in strategies: EndpointPickerConfig documents loaded by `epp.config.builtin_strategy`."""
