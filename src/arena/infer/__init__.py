"""arena-infer: length-sorted, token-budget batched scoring on torch, ONNX Runtime or TensorRT."""
