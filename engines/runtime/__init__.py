"""Where the engines run: which engines this machine offers (backends, select), CUDA streams
and host/device transfers (cuda_stream), TensorRT engines and their cache (tensorrt_runtime)."""
