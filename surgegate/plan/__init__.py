"""Capacity planning: the peak to plan for, the reserved / on-demand / spot mix, the warm pool (pure logic)."""
