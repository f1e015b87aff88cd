"""How to read the guided mark's payload from four views: the view the zero-bit test keeps (shipped) against the
views combined (their standardised logits summed, their soft chips summed, or weighted by how well each view reads
the 32 known zero-bit chips, maximal-ratio style). Development key, the cached marks of read_views.py:

    python bench/watermark/payload_views.py [DECODER_DIR] > bench/results/watermark_payload_views_dev.txt
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from safetensors.torch import load_file, safe_open

from generator.image_io import quantize
from watermark.attacks import ATTACKS, TREE_RING_SIX
from watermark.guided import GuidedScheme, codeword, decoder_and_center, soft_chips, zero_bit_test
from watermark.keys import WatermarkKey

SETS = "runs/views/dev.safetensors"


@torch.inference_mode()
def main() -> None:
    torch.set_num_threads(1)
    dec, cal = decoder_and_center(sys.argv[1] if len(sys.argv) > 1 else None)
    sets = load_file(SETS)
    with safe_open(SETS, "pt") as f:
        meta = f.metadata()
    key, payload = WatermarkKey(bytes([int(meta["key_seed"])]) * 32), int(meta["payload"])
    sch = GuidedScheme()
    z, pb = sch.zero_bits, sch.payload_bits
    stream = key.bits("v2/stream", sch.bits)
    truth = (codeword(key, payload, sch) < 0).numpy().astype(np.uint8) ^ stream  # the bits, key stream removed
    pilots = torch.from_numpy(1.0 - 2.0 * (key.bits("v2/zero", z) ^ stream[:z]).astype(np.float64))
    g = torch.Generator().manual_seed(3)

    def acc(chips: torch.Tensor) -> float:
        bits = (chips < 0).numpy().astype(np.uint8) ^ stream[None]
        return float((bits[:, z:z + pb] == truth[None, z:z + pb]).mean())

    res = {}
    for name in ("clean",) + TREE_RING_SIX:
        x = quantize(ATTACKS[name](sets["marked"], g))
        lg = torch.cat([dec(x[i:i + 128]) for i in range(0, len(x), 128)])
        _, _, bits = zero_bit_test(lg, cal, key, sch)
        zc = ((lg.double() - cal.center) / cal.mad).view(len(lg), dec.copies, -1)
        soft = soft_chips(lg, cal.center, cal.mad, dec.copies, cal.soft_clip)
        weight = (soft[:, :, :z] @ pilots).clamp(min=0)  # how well each view reads the known chips
        res[name] = {"kept view (shipped)": float((bits[:, z:z + pb] == truth[None, z:z + pb]).mean()),
                     "file view": acc(zc[:, 0]), "sum of standardised logits": acc(zc.sum(1)),
                     "sum of soft chips": acc(soft.sum(1)),
                     "soft chips weighted by pilot score": acc((soft * weight[:, :, None]).sum(1)),
                     "soft chips weighted by pilot score^2": acc((soft * weight[:, :, None] ** 2).sum(1))}
        print(name, {k: round(v, 4) for k, v in res[name].items()}, flush=True)
    print("mean over clean + the six", {k: round(float(np.mean([r[k] for r in res.values()])), 4) for k in res["clean"]})


if __name__ == "__main__":
    main()
