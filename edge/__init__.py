"""The edge side: the admission gate that follows throttle decisions, and the admitting gateway (reverse proxy)."""
