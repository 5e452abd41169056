//! Logs and Prometheus metrics.
