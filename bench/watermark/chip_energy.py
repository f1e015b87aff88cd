"""The chip energy (watermark.guided.soft_energy: the rms of a view's standardised chips) of marks, other keys' marks,
unmarked samples and real digits, clean and attacked: quantiles 5/25/50/75/95 %, file view, bundled decoder.
Development key, the cached marks of read_views.py:

    python bench/watermark/chip_energy.py > bench/results/watermark_chip_energy_dev.txt
"""
from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import load_file

from generator.image_io import quantize
from watermark.attacks import ATTACKS
from watermark.guided import decoder_and_center, soft_energy


@torch.inference_mode()
def main() -> None:
    torch.set_num_threads(1)
    dec, cal = decoder_and_center(None)
    sets = load_file("runs/views/dev.safetensors")
    g = torch.Generator().manual_seed(3)
    split = cal.energy_split.tolist() if cal.energy_split is not None else None
    print("energy split (each view's 99th percentile on the calibration's unmarked images):", split)
    for name in ("clean", "noise0.1", "jpeg25", "crop0.75", "brightness0-6"):
        row = []
        for k in ("marked", "other_key", "unmarked", "real"):
            x = quantize(ATTACKS[name](sets[k][:300], g))
            lg = torch.cat([dec(x[i:i + 128]) for i in range(0, len(x), 128)])
            e = soft_energy(lg, cal.center, cal.mad, dec.copies)[:, 0].numpy()
            row.append(f"{k} " + " ".join(f"{q:.2f}" for q in np.quantile(e, [0.05, 0.25, 0.5, 0.75, 0.95])))
        print(name, " | ".join(row), flush=True)


if __name__ == "__main__":
    main()
