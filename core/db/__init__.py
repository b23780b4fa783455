"""Storage: table definitions, the engine factory and repositories."""
