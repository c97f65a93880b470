"""A user's files in and out: images (8/16-bit, alpha, ICC profiles), masks, PNG settings text,
colour spaces, what kind a file is, atomic writes, and the tensor-file reader (safetensors, and
torch pickles checked before anything is unpickled). The bottom layer: it imports nothing from
`model`, `inference`, `cli` or `train`."""
