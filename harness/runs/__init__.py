"""Running things: evaluate one model on one task, sweeps, the quick benchmark, the regression
check against committed references, and each run's provenance."""
