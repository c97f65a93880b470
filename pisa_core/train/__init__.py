"""Training of PiSA-SR's two LoRAs (pixel, then semantic), the Real-ESRGAN-style degradation and
captions for the CSD loss.

Entry points: `pisa-sr train`, `pisa-sr degrade`, `pisa-sr caption`, or `python -m pisa_core.train`
(what `accelerate launch -m pisa_core.train ...` runs on several processes).
"""
