"""Real-versus-diffusion detection: a timm classifier, calibrated, with a zero-shot second opinion."""
