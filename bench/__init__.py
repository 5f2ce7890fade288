"""The throughput and latency benchmark; bench/run.py is its entry point."""
