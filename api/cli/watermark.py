"""watermark verify | eval: read our marks in files, and measure the marks' power and cost."""

from __future__ import annotations

import argparse

from ddpm_guard.api.cli.common import (add_json, add_out, emit_report, exit_status, nonnegative_int, positive_int, print_rows,
                            progress_log)


def cmd_watermark_verify(a: argparse.Namespace) -> int:
    from ddpm_guard.watermark.keys import load_key
    from ddpm_guard.watermark.verify import verify_files

    rows = verify_files(a.paths, {"key": load_key(a.key)}, checkpoint=a.checkpoint, alpha=a.alpha, steps=a.steps,
                        search=a.search, deep=not a.fast, progress=not a.json, decoder=a.decoder)
    # one key: the row says `watermarked` (this command's column since its first version) and names no key label
    rows = [r if "error" in r else {"path": r["path"], "watermarked": r["detected"],
                                    **{k: v for k, v in r.items() if k not in ("path", "detected", "key_label")}}
            for r in rows]
    print_rows(rows, a.json, ["path", "watermarked", "p_value", "payload", "zero_bit_agreement", "error"])
    return exit_status(rows)


def cmd_watermark_eval(a: argparse.Namespace) -> int:
    from ddpm_guard.watermark.evaluate import evaluate

    report = evaluate(a.key, checkpoint=a.checkpoint, guided=a.guided, n=a.n, n_negative=a.n_negative, steps=a.steps,
                      alpha=a.alpha, search=a.search, seed=a.seed, fid_seeds=a.fid_seeds, out_dir=a.out,
                      log=progress_log(a))
    return emit_report(report, a, "watermark_eval.json")


def register(sub) -> None:
    w = sub.add_parser("watermark", help="verify or evaluate the watermark").add_subparsers(dest="wm_command", required=True)
    wv = w.add_parser("verify", help="test images for the watermark of a key")
    wv.add_argument("--key", required=True)
    wv.add_argument("--alpha", type=float, default=0.01, help="false-positive rate of the decision (default 0.01)")
    wv.add_argument("--fast", action="store_true",
                    help="read only the guided mark (no inversion, 1,000+ images/s): for images made with --guided-mark")
    wv.add_argument("--steps", type=positive_int, default=None, help="DDIM inversion steps (default: measured choice)")
    wv.add_argument("--search", action="store_true",
                    help="also try 24 inverse rotations (25x slower; measured to recover nothing on the bundled model)")
    wv.add_argument("--checkpoint", default=None)
    wv.add_argument("--decoder", default=None, metavar="DECODER_DIR",
                    help="read the guided mark with this decoder folder (the one `sample --decoder` used)")
    add_json(wv)
    wv.add_argument("paths", nargs="+")
    wv.set_defaults(func=cmd_watermark_verify)

    we = w.add_parser("eval", help="detection power per attack, FPR on unmarked images and other keys, bit accuracy, "
                                   "verify speed, quality")
    we.add_argument("--key", required=True)
    we.add_argument("--n", type=positive_int, default=500, help="watermarked images per attack")
    we.add_argument("--n-negative", type=positive_int, default=None,
                    help="unmarked images for the FPR: the 1,000 held-out digits, then unmarked samples "
                         "(default 10,000; 2,000 with --guided, each under every attack)")
    we.add_argument("--guided", action="store_true",
                    help="evaluate the guided mark (sample --guided-mark), read without inversion, instead of the x_T mark")
    we.add_argument("--steps", type=positive_int, default=None, help="inversion steps (default 10)")
    we.add_argument("--alpha", type=float, default=0.01)
    we.add_argument("--search", action="store_true", help="include the rotation search (slow)")
    we.add_argument("--fid-seeds", type=nonnegative_int, default=2,
                    help="FID of watermarked vs plain samples over this many seeds, n each (0 skips)")
    we.add_argument("--seed", type=int, default=0)
    we.add_argument("--checkpoint", default=None)
    add_out(we, "folder for watermark_eval.json and the TPR chart", required=False)
    add_json(we)
    we.set_defaults(func=cmd_watermark_eval)
