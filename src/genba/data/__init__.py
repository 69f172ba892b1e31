"""genba.data: dataset layout (LeRobotDataset v3), reader, stats, transforms, specs.

This layer imports nothing else of genba.
"""
