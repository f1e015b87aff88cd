"""The guided mark's reader (watermark.reader): marks made in chunks come out the same however the run is split,
and fine-tuning a decoder on marks teaches it to read them; bad input exits 2 with one message."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from ddpm_guard.generator.checkpoint import BUNDLED
from ddpm_guard.generator.errors import GuardError
from ddpm_guard.watermark.guided.nets import DecoderConfig, load_decoder, MessageDecoder, save_decoder
from ddpm_guard.api.cli import main as cli
from ddpm_guard.watermark.guided.train import make_marks, train_reader


def main(args):  # the reader's commands, under `ddpm-guard weights reader`
    return cli(["weights", "reader", *args])


def decoder_main(args):  # `--out D --reader R`, under `ddpm-guard weights decoder reader`
    return cli(["weights", "decoder", "reader", "--decoder", args[1], args[3]])


def _chip_images(chips: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Toy marks: each of 72 chips is the sign of a bump at its own place on a noisy background."""
    n = len(chips)
    x = -1 + 0.2 * torch.rand(n, 1, 28, 28, generator=gen)
    for j in range(72):
        r, c = 2 + (j // 9) * 3, 1 + (j % 9) * 3
        x[:, 0, r:r + 2, c:c + 2] += (0.6 + 0.4 * chips[:, j]).view(-1, 1, 1)
    return x.clamp(-1, 1)


def test_training_a_reader_teaches_it_to_read_the_marks(tmp_path):
    gen = torch.Generator().manual_seed(0)
    chips = 1.0 - 2.0 * torch.randint(0, 2, (640, 72), generator=gen).float()
    save_file({"images": _chip_images(chips, gen), "chips": chips}, str(tmp_path / "m.safetensors"))
    base = tmp_path / "base"
    base.mkdir()
    torch.manual_seed(0)
    save_decoder(base, MessageDecoder(DecoderConfig(width=8)), {})
    info = train_reader([tmp_path / "m.safetensors"], tmp_path / "r", steps=300, lr=3e-3, identity_share=1.0,
                        decoder=str(base), log=lambda s: None)
    before, after = info["bit_accuracy_before"][0], info["bit_accuracy_after"][0]
    assert before < 0.56 and after > 0.65, (before, after)  # held-out marks, clean (a global-pooling CNN)
    reader, record = load_decoder(tmp_path / "r")
    assert isinstance(reader, MessageDecoder) and record["reader_training"]["n_marks"] == 640
    # attached to the base decoder with the decoder's CLI, it reads; a missing marks file is one message, exit 2
    assert decoder_main(["--out", str(base), "--reader", str(tmp_path / "r")]) == 0
    assert load_decoder(base)[0].reader is not None
    # a reader file lost: the folder no longer loads, and `--reader none` mends it
    (base / "reader.safetensors").unlink()
    with pytest.raises(GuardError, match="reader"):
        load_decoder(base)
    assert decoder_main(["--out", str(base), "--reader", "none"]) == 0
    assert load_decoder(base)[0].reader is None
    assert decoder_main(["--out", str(base), "--reader", str(tmp_path / "r")]) == 0
    assert main(["train", str(tmp_path / "nothing.safetensors"), "--out", str(tmp_path / "x"),
                 "--decoder", str(base)]) == 2


@pytest.mark.skipif(not (BUNDLED / "model.safetensors").exists(), reason="needs the bundled model")
def test_marks_made_in_two_runs_equal_one_run(tmp_path):
    whole = make_marks(4, tmp_path / "a.safetensors", chunk=2, log=lambda s: None)
    tail = make_marks(4, tmp_path / "b.safetensors", chunk=2, start=2, log=lambda s: None)
    a, b = load_file(str(whole)), load_file(str(tail))
    assert a["images"].shape == (4, 1, 28, 28) and torch.equal(a["images"][2:], b["images"])
    assert torch.equal(a["chips"][2:], b["chips"]) and a["chips"].abs().eq(1).all()
    assert main(["make", "--n", "4", "--chunk", "2", "--start", "3", "--out", str(tmp_path / "c")]) == 2
