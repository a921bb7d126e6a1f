"""The offline A/B evaluation: a nightly replay against wide-and-deep, its metrics,
bootstrap intervals, report and plots."""
