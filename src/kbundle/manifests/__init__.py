"""InferenceService manifests: load with line numbers, validate like the cluster would, edit canaries.

`documents` loads YAML with positions, `crds` finds the CRD schemas, `schema` checks objects
structurally, `webhook_rules` and `lint_rules` add KServe's cross-field rules and our own lint,
`check` ties them together; `canary` and `textedit` edit manifests byte-exactly.
"""
