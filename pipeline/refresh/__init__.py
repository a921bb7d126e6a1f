"""The nightly refresh: the Apache Beam job that adapts every user and publishes a
snapshot of meta embeddings."""
