"""The per-frame engines, one subpackage per stage of capture → landmarks → motion →
generator → sinks: landmarks/, motion/, generator/, each with its CPU and GPU forms side by
side behind the one interface they share; runtime/ says where they run (CPU, CUDA,
TensorRT). The engines need nothing from the service (daemon/), which composes them."""
