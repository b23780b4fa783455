"""Load, chaos and baselines for the orders platform: measurement tooling, not product."""
