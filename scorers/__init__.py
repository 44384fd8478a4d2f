"""Filters, scorers and pickers: one plugin per module."""
