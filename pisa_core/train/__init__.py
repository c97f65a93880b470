"""Training of PiSA-SR's two LoRAs (pixel, then semantic) and the Real-ESRGAN-style degradation.

Entry points: `pisa-sr train`, `pisa-sr degrade`, or `python -m pisa_core.train` (what
`accelerate launch -m pisa_core.train ...` runs on several processes).
"""
