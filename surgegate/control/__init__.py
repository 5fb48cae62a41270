"""Control policies: safe capacity, priority allocation, graded degradation,
circuit breaking and the throttle decision. Pure: time and inputs are passed in."""
