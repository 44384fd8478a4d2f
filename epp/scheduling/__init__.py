"""Scheduling framework: filters, weighted scorers and a picker, grouped into profiles."""
