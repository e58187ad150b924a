"""Lab 07 "Systems": expert parallelism with a real all-to-all, node-limited routing and its traffic, pipeline
bubbles of 1F1B, ZB1P and DualPipe, the overlap of communication with compute, and MFU measured on this device."""

NOTEBOOK = "07_systems"
