"""The three baselines of `orders bench`, each on the bench stack's own servers:

* (a) :mod:`bench.baselines.bare_engine` — a bare workflow of an order's shape, doing no I/O;
* (b) :mod:`bench.baselines.direct_handler` — one HTTP handler doing the order's calls in line;
* (c) :mod:`bench.baselines.dbos_flow` — the same order flow on DBOS, a peer engine that keeps its
  workflows in PostgreSQL (needs ``orders-tools[dbos]``).

Each runs in a child process of its own; :mod:`bench.baselines.runner` starts it and drives it.
"""
