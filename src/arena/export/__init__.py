"""arena-export: checkpoint -> verified ONNX -> optimised FP16 / INT8 ONNX -> TensorRT FP16 engines."""
