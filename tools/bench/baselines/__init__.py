"""The two baselines of `orders bench`, each on the bench stack's own servers:

* (a) :mod:`bench.baselines.bare_engine` — a bare workflow of an order's shape, doing no I/O;
* (b) :mod:`bench.baselines.direct_handler` — one HTTP handler doing the order's calls in line.

Each runs in a child process of its own; :mod:`bench.baselines.runner` starts it and drives it.
"""
