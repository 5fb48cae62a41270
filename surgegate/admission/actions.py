"""The three answers an admission gate gives a request."""

ADMIT, DEFER, REJECT = "admit", "defer", "reject"
