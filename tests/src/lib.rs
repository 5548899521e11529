//! End-to-end suites on a real containerd node (test bed), the CRI driver and the benchmarks
