"""The `meta-embed` command line: the only package that imports both `pipeline` and `serving`."""
