"""Online serving: the embedding store, the lightweight scorer, FAISS indexes and
the HTTP API. Nothing here runs MAML."""
