"""Activities: one module per outside concern. Each is a method of a small class that receives its
dependencies in ``__init__`` and is safe to run more than once."""
