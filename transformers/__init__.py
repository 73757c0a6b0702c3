"""The transformer container: spec-driven pre-processing in front of a predictor, and the hop to it.

`python -m kbundle.transformers` (see docs/transformer.md). One module per concern: `spec` (the
transformer.yaml in the model dir), one per feature kind (`image`, `tabular`, `text`,
`passthrough`), `pipeline` (runs them over a request), `hop`/`hop_grpc`/`hop_rest` (the call to
the predictor), `model` (the kserve.Model), `__main__` (flags and start-up).
"""
