"""The load generator: `python -m bench.loadgen --help`."""
