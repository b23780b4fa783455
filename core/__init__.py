"""Shared kernel: domain models, settings, logging, database and Temporal client factories."""
