"""`orders regions drill`: two regional cells in network namespaces, one cut off, measured."""
