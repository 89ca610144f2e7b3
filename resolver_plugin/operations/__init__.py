"""Operations: the node status, `status`, the admin endpoint and the Prometheus counters."""
