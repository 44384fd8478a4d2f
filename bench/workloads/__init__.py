"""The matrix's named workloads (docs/workloads.md): generators, the Mooncake trace, the catalogue."""
