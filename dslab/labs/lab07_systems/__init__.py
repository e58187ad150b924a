"""Lab 07 "Systems": expert parallelism with a real all-to-all, node-limited routing and its traffic, pipeline
bubbles of 1F1B, ZB1P and DualPipe, the overlap of communication with compute, and MFU measured on this device."""

NOTEBOOK = "07_systems"
TEACHES = ("an expert-parallel MoE over a real all-to-all, node-limited routing, V3's once-per-node dispatch "
           "copies, pipeline schedules (1F1B, ZB1P, DualPipe), overlap")
REPRODUCES = ("V3 Table 2's bubble and memory per schedule; cross-node traffic under the 4-node limit; V3's implied "
              "MFU from its GPU hours")
