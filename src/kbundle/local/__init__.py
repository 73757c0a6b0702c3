"""`kbundle up`: an InferenceService file run locally (revisions, canary, scale to zero), no cluster."""
