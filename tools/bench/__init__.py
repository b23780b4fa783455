"""Load, chaos and baselines for the orders platform: measurement tooling, not product.

* :mod:`bench.command` — `orders bench`: its options, the printed and written report, the exit code;
* :mod:`bench.run` — one bench run: the load phases, what is measured around them, the baselines;
* :mod:`bench.loadgen` — the load generator (public HTTP API only);
* :mod:`bench.measure` — figures of a load run and of the servers (CPU, memory, kernel, gateway,
  providers, Temporal actions);
* :mod:`bench.baselines` — the bare-engine and direct-handler baselines and their runner;
* :mod:`bench.report` — the report as text and as a chart;
* :mod:`bench.stack` — a throw-away platform of child processes;
* :mod:`bench.chaos` — `orders chaos`: faults during load, then :mod:`bench.invariants`.
"""
