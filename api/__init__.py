"""The gateway: validates, authenticates, and talks to Temporal and the read model."""
