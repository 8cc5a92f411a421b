"""Where manifests come from: one module per kind of source."""
