"""The GPU-worker side: the scaling subscriber and the scalers that carry out each pool's decision."""
