"""Our two keyed watermarks, both written during the reverse process:

- the x_T mark (`latent/`, Gaussian Shading): the starting noise carries the key and payload; no quality cost; read by
  DDIM inversion; no edit survives it;
- the guided mark (`guided/`): the late steps are steered toward a keyed codeword that a robust decoder reads
  without inversion, through rotations, crops, blur and JPEG re-saves; opt-in, at a visible quality cost.

`marking` generates with an explicit MarkSpec, `verify` reads both marks through one path, `attacks` is the one
attack module, `evaluate` measures the marks.
"""
