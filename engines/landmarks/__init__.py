"""Stage 2, landmarks: 478 3D face points per camera frame. interface.py is the contract;
mediapipe_cpu.py (CPU) and torch_path.py (GPU: CUDA graphs or TensorRT) implement it."""
