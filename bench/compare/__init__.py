"""`epp bench compare`: the same multi-round QA workload through each routing strategy, side by side."""
