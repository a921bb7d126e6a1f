"""Training jobs: meta-train the two-block model into a checkpoint; MeLU evidence
candidates of a checkpoint."""
