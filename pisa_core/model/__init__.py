"""The models and their weights: the SD2.1 base model (single file or diffusers folder, offline
configs, LDM key conversion), the PiSA-SR weights (the official .pkl read safely, this project's
.safetensors, and the weights in a training state), the fast decoder's file, the LoRA maths and
adapters, the empty-prompt cache and the in-place resnet. Imports only `files` and the shared
bottom (errors, options, version)."""
