"""arena-bench: throughput benchmarks and the data report."""
