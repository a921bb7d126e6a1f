"""Offline batch work: data ingest and preparation, meta-training, the nightly
refresh job on Apache Beam, and offline evaluation."""
