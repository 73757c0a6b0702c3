"""Engine predictors: kserve.Model subclasses that serve ONNX Runtime, TensorRT and Torch engines."""
