"""Stage 3, motion: landmarks → head pose and expression relative to the user's neutral face
(estimator.py), tuned by config.py."""
