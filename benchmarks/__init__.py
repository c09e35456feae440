"""
The e-POP benchmark suite: ``make bench`` (``python -m benchmarks.run``).

Everything runs on 127.0.0.1 as separate processes (sandbox, relay, squid,
socat, clients), so that the relay's CPU time and memory are its own.  See
``docs/performance.md``.
"""
