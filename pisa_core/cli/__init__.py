"""The command line: `pisa-sr upscale | convert | info` (main.py), the training commands
`pisa-sr train | degrade | caption` (train.py) and what they share (support.py). The top layer
with `train`: it may import every layer below it and `train`; nothing below imports it."""
