"""What the leave-one-family-out benches share (edit_expert.py, domain_components.py; at commit 4d984be also the
rejected designs' expert_views.py, edit_cnn.py and denoiser_residual.py): the bundled detector's training families, in the order their random edits are drawn, `detector eval`'s edits
scored, and the AUC. Imported as a sibling module (the benches run as `python bench/detector/NAME.py`)."""
import numpy as np
from sklearn.metrics import roc_auc_score

FAMILIES = ["bundled", "detector/weights/families/ddpm-b", "detector/weights/families/vae",
            "detector/weights/families/gan"]
TESTS = ("jpeg75", "jpeg50", "blur1", "resize0.5", "noise0.05")


def auc(real: np.ndarray, fake: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(real)), np.ones(len(fake))], np.r_[real, fake]))
