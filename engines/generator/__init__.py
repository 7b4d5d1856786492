"""Stage 4, generator: the avatar animated by the motion. interface.py is the contract;
avatar_prep, mesh, warp are the shared geometry; mesh_cpu.py (OpenCV) and mesh_torch.py
(torch) are the pixel backends; still.py the unanimated image."""
