"""The x_T mark (Gaussian Shading, Yang et al. 2024): `codec` turns a key and payload into the starting noise,
`read` reads it back by DDIM inversion with an exact p-value. It costs no quality; no edit survives it."""
