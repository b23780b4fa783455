"""What a bench run measures besides the load generator's own records, one source per module:

* :mod:`bench.measure.load` — figures of one load run (throughput, outcomes, latency, statuses);
* :mod:`bench.measure.resources` — CPU time and resident memory of the servers' process trees;
* :mod:`bench.measure.kernel` — the kernel's TCP counters (``/proc/net/netstat``);
* :mod:`bench.measure.gateway` — the gateway's own answer times (its ``/metrics`` histogram);
* :mod:`bench.measure.providers` — provider calls per second, from the sandbox's ledger;
* :mod:`bench.measure.temporal` — Temporal actions and history events per order.
"""
