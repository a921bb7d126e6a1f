"""meta-embed core library: feature encoding, the two-block model, batched MAML,
meta-training, checkpoints and the meta-embedding snapshot format (no Beam, no HTTP)."""

__version__ = "0.1.0"
