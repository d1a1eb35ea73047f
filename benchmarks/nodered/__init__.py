"""Node-RED as a peer of the ingest in the benchmarks (see peer.py)."""
