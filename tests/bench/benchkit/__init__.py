"""Shared pieces of the benchmarks in tests/bench (processes, the daemon, SIPp, steps,
systems, summary). compare.py is the command; the other benchmarks import from here
(or, as before, from compare)."""
