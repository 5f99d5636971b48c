"""Benchmarks and the load generator: `make bench` (python -m bench), `make bench-engine`.

engine (matching engine alone), relay (journal -> broker), query (read API and fan-out seeding),
loadgen (the HTTP/WS load generator and its order-to-visible probe), plot (PNG plots of results),
doc (writes the sections of docs/BENCHMARKS.md). Nothing here ships inside a service.
"""
