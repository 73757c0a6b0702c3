"""kbundle: a KServe platform bundle (engine predictors, transformers, storage-init, manifests)."""

__version__ = "0.1.0"
