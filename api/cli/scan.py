"""scan, audit: one verdict per image (our watermark, signed metadata, the classifier), for a few files or a
whole data set."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ddpm_guard.api.cli.common import (add_json, add_out, add_scan_options, exit_status, positive_int, print_rows,
                            scan_settings)


def cmd_scan(a: argparse.Namespace) -> int:
    from ddpm_guard.api.runtime import open_runtime
    from ddpm_guard.api.scan import scan_paths

    rt = open_runtime(scan_settings(a), extra_keys=a.key, watermark=not a.no_watermark)
    rows = scan_paths(a.paths, rt.scanner, progress=not a.json)
    if a.json:
        print_rows(rows, True, [])
    else:
        flat = [{**r, "watermark_p": (r.get("watermark") or {}).get("p_value"),
                 "c2pa": ((r.get("metadata") or {}).get("c2pa") or {}).get("status")} for r in rows]
        print_rows(flat, False, ["path", "verdict", "p_synthetic", "watermark_p", "c2pa", "account", "explanation"])
    return exit_status(rows)


def cmd_audit(a: argparse.Namespace) -> int:
    from ddpm_guard.api.audit import run_audit
    from ddpm_guard.api.usecases import audit_key_files, audit_spec

    settings = scan_settings(a)
    spec = audit_spec(settings, key_files=audit_key_files(settings, a.key, ring=a.watermark), training=a.training_set)
    summary = run_audit(a.path, a.out, spec, engine=a.engine, batch=a.batch, workers=a.workers, address=a.address,
                        progress=not a.json)
    print(json.dumps(summary) if a.json else json.dumps(summary, indent=2))
    if not a.json:
        print(f"reports: {Path(a.out) / 'report.html'}, report.json, report.csv", file=sys.stderr)
    if not summary.get("files"):  # the (empty) report is written; the run still says it found nothing
        print(f"ddpm-guard: error: {a.path}: no image files to audit", file=sys.stderr)
        return 2
    return 0


def register(sub) -> None:
    sc = sub.add_parser("scan", help="one verdict per image: our watermark, signed metadata, then the classifier")
    sc.add_argument("paths", nargs="+", help="image files or folders")
    add_scan_options(sc, key_help="also test this watermark key file (repeatable)",
                     anchor_help="PEM file of a trusted C2PA CA (repeatable)",
                     home_help="service home whose key ring, trust anchors and accounts to use",
                     alpha_help="false-positive rate of the watermarked-ours verdict (default 0.001; see BENCHMARKS.md)",
                     detector_help="detector folder (default: the bundled detector)")
    sc.add_argument("--no-watermark", action="store_true", help="skip the watermark check (about 20x faster)")
    add_json(sc, "one JSON object per image")
    sc.set_defaults(func=cmd_scan)

    au = sub.add_parser("audit", help="audit a folder or archive for synthetic images: resumable, HTML/JSON/CSV report")
    au.add_argument("path", help="a folder (recursive), a .zip or a .tar(.gz)")
    add_out(au, "report folder; rerun the same command to resume after a crash")
    add_scan_options(au, key_help="also test this watermark key (the deep check; repeatable)",
                     anchor_help="PEM of a trusted C2PA CA (repeatable)",
                     home_help="service home for keys, trust anchors and account names")
    au.add_argument("--watermark", action="store_true",
                    help="the deep watermark check with the home's key ring (DDIM inversion: ~50x slower per file)")
    au.add_argument("--training-set", default=None, help="also the memorization ratio against this data set (e.g. mnist5k)")
    au.add_argument("--engine", choices=["local", "ray"], default="local")
    au.add_argument("--address", default=None, help="join this Ray cluster (default: start a small local Ray)")
    au.add_argument("--workers", type=positive_int, default=None, help="Ray actors (default 1)")
    au.add_argument("--batch", type=positive_int, default=256, help="files per scoring batch (default 256)")
    add_json(au, "print the summary as one JSON line, no progress bar")
    au.set_defaults(func=cmd_audit)
