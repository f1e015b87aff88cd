"""The ddpm-guard command line. Each subcommand parses, calls one library function and prints.

User mistakes raise GuardError: we print its message on stderr and exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from generator.errors import GuardError


def _int_at_least(lo: int):
    """An argparse type: a whole number >= lo, refused with one clear message otherwise."""
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not a whole number") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {v}")
        return v
    return parse


_positive_int, _nonnegative_int = _int_at_least(1), _int_at_least(0)


def _nonnegative_float(s: str) -> float:
    """An argparse type: a finite number >= 0 (a time budget), refused with one clear message otherwise."""
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {s}")
    return v


def _folder(s: str) -> Path:
    """An argparse type: a folder path, not empty (an unset shell variable would otherwise mean the working folder)."""
    if not s.strip():
        raise argparse.ArgumentTypeError("an empty path; give a folder")
    return Path(s)


def cmd_train(a: argparse.Namespace) -> int:
    from generator.config import DiffusionConfig, TrainConfig, UNetConfig
    from generator.data import load_dataset
    from generator.train import Trainer

    if a.resume:
        trainer = Trainer.resume(a.out, max_steps=a.steps, max_minutes=a.max_minutes)
    else:
        if (Path(a.out) / "config.json").exists():
            raise GuardError(f"{a.out} already holds a run; pass --resume to continue it or choose another --out")
        unet = UNetConfig(image_size=a.image_size or 28, in_channels=a.channels or 1,
                          base_channels=a.base_channels, channel_mult=tuple(a.channel_mult),
                          attention_resolutions=tuple(a.attention_resolutions), num_res_blocks=a.num_res_blocks,
                          num_classes=None if a.unconditional else 10, dropout=a.dropout)
        diffusion = DiffusionConfig(beta_schedule=a.schedule)
        train = TrainConfig(dataset=a.data, batch_size=a.batch_size, lr=a.lr, max_steps=a.steps or 20000,
                            precision=a.precision, seed=a.seed, ema_decay=a.ema_decay,
                            warmup_steps=a.warmup_steps, checkpoint_every=a.checkpoint_every,
                            max_minutes=a.max_minutes)
        trainer = Trainer(a.out, unet, diffusion, train)
    cfg = trainer.unet_cfg
    data = load_dataset(trainer.cfg.dataset, "train", image_size=cfg.image_size, channels=cfg.in_channels)
    last = trainer.fit(data)
    print(json.dumps({"out": str(a.out), **last}))
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    from generator.checkpoint import load_model
    from generator.pipeline import generate, write_samples

    key, payload, signer = _marking_args(a)
    if a.guided_mark and key is None:
        raise GuardError("--guided-mark needs --watermark-key")
    if a.decoder is not None and not a.guided_mark:
        raise GuardError("--decoder goes with --guided-mark")
    if a.prompt is not None:
        if a.label is not None:
            raise GuardError("give --prompt or --label, not both")
        from generator.text import load_prompt_model

        a.label = load_prompt_model().label_for(a.prompt)
        if not a.json:
            print(f"prompt {a.prompt!r} -> digit {a.label}", file=sys.stderr)
    if a.fast:
        if a.checkpoint or a.sampler or a.steps:
            raise GuardError("--fast picks the model, sampler and steps itself; drop --checkpoint, --sampler and --steps")
        from generator.checkpoint import load_fast

        fast = load_fast()
        model, schedule, a.sampler, a.steps = fast.model, fast.schedule, fast.sampler, fast.steps
        a.guidance = fast.guidance if a.guidance is None else a.guidance
    else:
        model, schedule, _ = load_model(a.checkpoint)
    kw = dict(label=a.label, guidance=a.guidance, sampler=a.sampler or "ddim", steps=a.steps, eta=a.eta,
              variance=a.variance, seed=a.seed, precision=a.precision, progress=not a.json)
    if key is not None:
        from watermark.embed import generate_watermarked

        # a guided mark the decoder cannot read, or a --decoder folder that is no calibrated decoder, is refused
        # in generate_watermarked's first check, before sampling
        images, labels = generate_watermarked(model, schedule, key, payload, a.n, guided=a.guided_mark,
                                              decoder=a.decoder, **kw)
    else:
        images, labels = generate(model, schedule, a.n, **kw)
    paths = write_samples(images, a.out, labels)
    if signer is not None:
        _sign_files(paths, signer, {"payload": None if payload is None else f"{payload:08x}",
                                    "key_fingerprint": None if key is None else key.fingerprint})
    for i, p in enumerate(paths):
        rec = {"path": str(p), "label": None if labels is None else int(labels[i]), "seed": a.seed,
               "watermarked": key is not None}
        if key is not None:
            rec.update(payload=f"{payload:08x}", key_fingerprint=key.fingerprint, guided_mark=a.guided_mark)
        if a.json:
            print(json.dumps(rec))
    if not a.json:
        mark = f", watermarked with key {key.fingerprint} payload {payload:08x}" if key is not None else ""
        print(f"wrote {len(paths)} samples and {Path(a.out) / 'grid.png'}{mark}")
    return 0


def _marking_args(a: argparse.Namespace):
    """(key, payload, signer) from --watermark-key/--payload/--sign, all None when not given. Read
    before any sampling, so a missing key or signer is refused before minutes of work, not after."""
    key = payload = signer = None
    if a.watermark_key:
        from watermark.embed import parse_payload

        key, payload = _load_key(a.watermark_key), parse_payload(a.payload)
    elif a.payload is not None:
        raise GuardError("--payload needs --watermark-key")
    if a.sign:
        from provenance.c2pa import load_signer

        signer = load_signer(a.sign)
    return key, payload, signer


def _sign_files(paths: list[Path], signer, assertion: dict) -> None:
    """Rewrite PNGs in place with the IPTC XMP source type and a signed C2PA manifest (atomic writes)."""
    from generator.fsutil import atomic_write_bytes
    from provenance.c2pa import sign_png

    for p in paths:
        atomic_write_bytes(p, sign_png(Path(p).read_bytes(), signer, title=Path(p).name, assertion=assertion))


def _app_inputs(a: argparse.Namespace, default_checkpoint=None):
    """What every application command needs, checked before any sampling: the model, the input image
    (safe decoder), the marking (key + payload) and the signer."""
    from api.apps import Marking
    from generator.checkpoint import load_model
    from generator.image_io import load_image

    key, payload, signer = _marking_args(a)
    if Path(a.out).is_dir():
        raise GuardError(f"--out {a.out} is a folder; give the output file's name, e.g. {Path(a.out) / 'out.png'}")
    img = load_image(a.image)
    model, schedule, _ = load_model(a.checkpoint or default_checkpoint)
    return model, schedule, img, Marking(key, payload or 0, a.seed), signer


def _write_app_output(a: argparse.Namespace, img, marking, signer, app: str, extra: dict) -> int:
    """One PNG at --out (atomic), signed as an AI edit when --sign is given; one line (or JSON) out."""
    from generator.fsutil import atomic_write_bytes
    from generator.image_io import encode_png

    png = encode_png(img)
    if signer is not None:
        from provenance.c2pa import COMPOSITE_TRAINED, sign_png

        png = sign_png(png, signer, title=Path(a.out).name, source_type=COMPOSITE_TRAINED,
                       assertion={"application": app, "payload": None if marking.key is None else f"{marking.payload:08x}",
                                  "key_fingerprint": None if marking.key is None else marking.key.fingerprint})
    try:
        atomic_write_bytes(Path(a.out), png)  # creates the parent folder
    except OSError as e:
        raise GuardError(f"{a.out}: cannot write the output ({e.strerror})") from None
    rec = {"path": str(a.out), "application": app, "size": [int(img.shape[-1]), int(img.shape[-2])],
           "watermarked": marking.key is not None, "signed": signer is not None, "seed": a.seed, **extra}
    if marking.key is not None:
        rec.update(payload=f"{marking.payload:08x}", key_fingerprint=marking.key.fingerprint)
    print(json.dumps(rec) if a.json else f"wrote {a.out} ({app}, {rec['size'][0]}x{rec['size'][1]}"
          + (", watermarked" if marking.key is not None else "") + (", signed" if signer is not None else "") + ")")
    return 0


def _app_kw(a: argparse.Namespace) -> dict:
    return dict(steps=a.steps, eta=a.eta, jump=a.jump, repeats=a.repeats, precision=a.precision)


def cmd_refine(a: argparse.Namespace) -> int:
    from api.apps import refine

    model, schedule, img, marking, signer = _app_inputs(a)
    out = refine(model, schedule, img, scale=a.scale, deblur=a.deblur, marking=marking, **_app_kw(a))
    return _write_app_output(a, out, marking, signer, "refine", {"scale": a.scale, "deblur": a.deblur})


def cmd_inpaint(a: argparse.Namespace) -> int:
    from api.apps import MASKS, built_in_mask, inpaint_image, mask_from_image
    from generator.image_io import load_image

    model, schedule, img, marking, signer = _app_inputs(a)
    if a.mask in MASKS:
        known = built_in_mask(a.mask, img.shape[-2], img.shape[-1], a.seed)
    else:
        known = mask_from_image(load_image(a.mask), tuple(img.shape[-2:]))
    out = inpaint_image(model, schedule, img, known, marking=marking, **_app_kw(a))
    return _write_app_output(a, out, marking, signer, "inpaint",
                             {"mask": a.mask, "filled_pixels": int((known == 0).sum())})


def cmd_colorize(a: argparse.Namespace) -> int:
    from api.apps import colorize, is_gray
    from generator.checkpoint import BUNDLED_COLOR

    model, schedule, img, marking, signer = _app_inputs(a, BUNDLED_COLOR)
    if not is_gray(img):
        print("ddpm-guard: note: the input has colour; it is colorized from its luma (grey) only", file=sys.stderr)
    out = colorize(model, schedule, img, marking=marking, samples=a.samples, **_app_kw(a))
    return _write_app_output(a, out, marking, signer, "colorize", {})


def cmd_eval_gen(a: argparse.Namespace) -> int:
    from generator.checkpoint import load_model
    from generator.evaluate import evaluate_generator

    model, schedule, _ = load_model(a.checkpoint)
    sweep = tuple(a.step_sweep) if a.step_sweep else ()
    report = evaluate_generator(model, schedule, n=a.n, sampler=a.sampler, steps=a.steps, guidance=a.guidance,
                                guidance_sweep=tuple(a.guidance_sweep), step_sweep=sweep,
                                sweep_samplers=tuple(a.sweep_samplers), seed=a.seed,
                                out_dir=a.out, log=_progress_log(a))
    return _emit_report(report, a, "eval_gen.json")


def cmd_keys_new(a: argparse.Namespace) -> int:
    from watermark.keys import new_key_file

    key = new_key_file(a.out)
    print(json.dumps({"key_file": str(a.out), "key_fingerprint": key.fingerprint, "mode": "0600"}))
    return 0


def cmd_keys_new_signer(a: argparse.Namespace) -> int:
    from provenance.c2pa import new_signer

    new_signer(a.out, a.organization)
    print(json.dumps({"signer": str(a.out), "trust_anchor": str(Path(a.out) / "ca.pem"), "organization": a.organization}))
    return 0


def cmd_keys_new_api(a: argparse.Namespace) -> int:
    from api.runtime import prepare_home
    from api.settings import load_settings
    from api.store import Store

    settings = load_settings(a.home)
    prepare_home(settings)
    account, key = Store(settings.db_url).new_api_key(a.account)
    print(json.dumps({"account": account.name, "account_id": account.id, "api_key": key}))
    return 0


def _exit_status(rows: list[dict]) -> int:
    """2 when none of the inputs could be read (a missing file, an empty folder, only corrupt files: a user
    mistake, said per row after the rows are printed), else 0."""
    if rows and all(r.get("error") for r in rows):
        print(f"ddpm-guard: error: none of the {len(rows)} input(s) could be read (see the error column)", file=sys.stderr)
        return 2
    return 0


def cmd_scan(a: argparse.Namespace) -> int:
    from api.runtime import open_runtime
    from api.scan import scan_paths
    from api.settings import load_settings

    settings = load_settings(a.home, alpha=a.alpha, detector=a.detector,
                             trust_anchors=a.trust_anchor or None, watermark_decoder=a.watermark_decoder)
    rt = open_runtime(settings, extra_keys=a.key, watermark=not a.no_watermark)
    rows = scan_paths(a.paths, rt.scanner, progress=not a.json)
    if a.json:
        _print_rows(rows, True, [])
    else:
        flat = [{**r, "watermark_p": (r.get("watermark") or {}).get("p_value"),
                 "c2pa": ((r.get("metadata") or {}).get("c2pa") or {}).get("status")} for r in rows]
        _print_rows(flat, False, ["path", "verdict", "p_synthetic", "watermark_p", "c2pa", "account", "explanation"])
    return _exit_status(rows)


def cmd_audit(a: argparse.Namespace) -> int:
    from api.audit import run_audit
    from api.audit.engine import ScanSpec
    from api.runtime import key_files
    from api.settings import load_settings
    from provenance.c2pa import load_trust_anchors
    from watermark.keys import load_key

    settings = load_settings(a.home, alpha=a.alpha, detector=a.detector, trust_anchors=a.trust_anchor or None,
                             watermark_decoder=a.watermark_decoder)
    keys = [str(p) for p in key_files(settings.keys_dir)] if a.watermark else []
    keys += a.key
    if a.watermark and not keys:
        raise GuardError(f"--watermark needs keys: pass --key FILE or use a service home with keys ({settings.keys_dir})")
    for k in keys:
        load_key(k)  # a wrong or open key fails now, not in a worker
    if keys:
        from api.runtime import check_decoder

        check_decoder(settings.watermark_decoder)  # so does a folder that is no calibrated decoder
    if a.training_set:
        from generator.data import load_dataset

        load_dataset(a.training_set, "train")  # an unknown name fails now
    db = settings.db_url if settings.has_store else None
    spec = ScanSpec(detector=settings.detector, checkpoint=settings.checkpoint, key_files=tuple(keys),
                    trust_anchors=load_trust_anchors(settings.anchor_files()), alpha=settings.alpha, db_url=db,
                    training=a.training_set, decoder=settings.watermark_decoder)
    summary = run_audit(a.path, a.out, spec, engine=a.engine, batch=a.batch, workers=a.workers, address=a.address,
                        progress=not a.json)
    print(json.dumps(summary) if a.json else json.dumps(summary, indent=2))
    if not a.json:
        print(f"reports: {Path(a.out) / 'report.html'}, report.json, report.csv", file=sys.stderr)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    import uvicorn

    from api.service import create_app
    from api.settings import load_settings

    app = create_app(load_settings(a.home))
    # no access log: request lines may carry file names, and headers are never worth the risk
    uvicorn.run(app, host=a.host, port=a.port, access_log=False, log_level="info", server_header=False)
    return 0


def cmd_watermark_verify(a: argparse.Namespace) -> int:
    from watermark.verify import verify_files

    key = _load_key(a.key)
    rows = verify_files(a.paths, key, checkpoint=a.checkpoint, alpha=a.alpha, steps=a.steps, search=a.search,
                        deep=not a.fast, progress=not a.json, decoder=a.decoder)
    _print_rows(rows, a.json, ["path", "watermarked", "p_value", "payload", "zero_bit_agreement", "error"])
    return _exit_status(rows)


def cmd_watermark_eval(a: argparse.Namespace) -> int:
    from generator.checkpoint import load_model
    from watermark.evaluate import evaluate_guided, evaluate_watermark

    key = _load_key(a.key)
    model, schedule, _ = load_model(a.checkpoint)
    if not a.guided or a.search:  # --guided on a model the decoder cannot read is refused by evaluate_guided
        report = evaluate_watermark(model, schedule, key, n=a.n, n_negative=a.n_negative or 10_000, steps=a.steps or 10,
                                    alpha=a.alpha, search=a.search, seed=a.seed, fid_seeds=a.fid_seeds, out_dir=a.out,
                                    log=_progress_log(a))
    else:
        report = evaluate_guided(model, schedule, key, n=a.n, n_negative=a.n_negative or 2000, alpha=a.alpha, seed=a.seed,
                                 fid_seeds=a.fid_seeds, log=_progress_log(a))
    return _emit_report(report, a, "watermark_eval.json")


def cmd_detect(a: argparse.Namespace) -> int:
    from detector.predict import detect_files, load_detector

    det = load_detector(a.detector)
    rows = detect_files(a.paths, det, zero_shot=a.zero_shot, progress=not a.json)
    if a.json:
        _print_rows(rows, True, [])
    else:
        flat = [{**{k: v for k, v in r.items() if k != "scores"}, **r.get("scores", {})} for r in rows]
        cols = (["path", "synthetic", "p_synthetic", "threshold", "edit", "in_domain", "reason", "classifier"]
                + (["dire", "fused"] if a.zero_shot else []) + ["error"])
        _print_rows(flat, False, cols)
    return _exit_status(rows)


def _families(a: argparse.Namespace, default_bundled: bool) -> list:
    """--fake-generator RUN_DIR|bundled and --fake folder:PATH -> detector.sources.Family, checked up front."""
    from detector.sources import BUNDLED, folder_family, parse_generator

    gens = a.fake_generator or ([BUNDLED] if default_bundled and not a.fake else [])
    fams = [parse_generator(g) for g in gens] + [folder_family(f) for f in a.fake or []]
    names = [f.name for f in fams]
    if len(set(names)) != len(names):
        raise GuardError(f"two fake families share a name ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))}); "
                         "rename one folder")
    return fams


def _detector_sources(a: argparse.Namespace, out: str) -> list:
    """The fake families and real folders of `detector train` / `calibrate`, checked, and the output folder made:
    a mistake fails before the minutes of fake-making and training, not after."""
    from detector.sources import parse_folder

    families = _families(a, default_bundled=True)
    for r in a.real or []:
        if r != "mnist5k":
            parse_folder(r, "--real")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GuardError(f"{out}: cannot create the output folder ({e.strerror})") from None
    return families


def _calibration_summary(det, out: str) -> dict:
    return {"out": str(out), "threshold": det.threshold,
            "routed_thresholds": None if det.router is None else det.router.by_edit,
            "calibration_fpr": det.meta.get("calibration_fpr"), "calibration_tpr": det.meta.get("calibration_tpr")}


def _fake_cache_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fake-cache", type=_folder, default=None, metavar="DIR",
                   help="where generated fakes are kept between runs (default runs/detector/fakes under the working "
                        "folder: run from elsewhere, the fakes are made again)")


def _fake_cache(a: argparse.Namespace) -> Path:
    """The fakes' cache folder, made now, so that a bad path fails before minutes of sampling, not after."""
    from detector.train import FAKE_CACHE

    path = a.fake_cache or FAKE_CACHE
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GuardError(f"--fake-cache {path}: cannot use it as a folder ({e.strerror or e})") from None
    return path


def cmd_detector_train(a: argparse.Namespace) -> int:
    from detector.model import DetectorConfig
    from detector.train import fit_detector

    families = _detector_sources(a, a.out)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    cfg = DetectorConfig(input=a.input, background_floor=a.background_floor, stats=not a.no_stats)
    det = fit_detector(cfg, families=families, reals=a.real, epochs=a.epochs, seed=a.seed, aug_p=a.augment_p,
                       stay_positive=a.stay_positive, zero_shot=a.zero_shot, loo=not a.no_loo, loo_epochs=a.loo_epochs,
                       experts=not a.no_experts, cache=_fake_cache(a), log=log)
    det.save(a.out)
    print(json.dumps({**_calibration_summary(det, a.out), "leave_one_out": det.meta.get("leave_one_out")}))
    return 0


def cmd_detector_calibrate(a: argparse.Namespace) -> int:
    from detector.predict import load_detector
    from detector.train import recalibrate

    out = a.out or a.detector
    if out is None:
        raise GuardError("give --out (or --detector FOLDER to rewrite it): the bundled detector is not rewritten in place "
                         "by default")
    families = _detector_sources(a, out)
    det = load_detector(a.detector)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    det = recalibrate(det, families=families, reals=a.real, seed=a.seed, route=not a.no_route,
                      experts=not a.no_experts, cache=_fake_cache(a), log=log)
    det.save(out)
    print(json.dumps(_calibration_summary(det, out)))
    return 0


def _trained_families(det) -> list:
    """The generator families a detector was trained on, where their folders still exist (folders of fakes
    made elsewhere are not re-read: their images were all used in training)."""
    from detector.sources import BUNDLED, parse_generator

    out = []
    for f in (det.meta.get("train") or {}).get("families", {}).values():
        if f.get("kind") != "folder" and (f.get("path") is None or Path(f["path"]).is_dir()):
            out.append(parse_generator(f.get("path") or BUNDLED))
    return out


def cmd_detector_eval(a: argparse.Namespace) -> int:
    from detector.evaluate import evaluate_detector
    from detector.predict import load_detector
    from detector.sources import parse_generator

    det = load_detector(a.detector)
    families = _families(a, default_bundled=False) or _trained_families(det)
    families += [parse_generator(g) for g in a.unseen_generator or []]
    if not families:
        raise GuardError("no fake families to evaluate on; give --fake-generator or --fake")
    report = evaluate_detector(det, families, seed=a.seed, cache=_fake_cache(a), zero_shot_n=a.zero_shot_n,
                               out_dir=a.out, log=_progress_log(a))
    return _emit_report(report, a, "detector_eval.json")


def cmd_demo(a: argparse.Namespace) -> int:
    from api.demo import DEMO_PAYLOAD, run_demo

    rows = run_demo(a.out)
    print(f"demo key: {Path(a.out) / 'demo.key'} (mode 0600); watermarked digits carry payload {DEMO_PAYLOAD}")
    _print_rows(rows, a.json, ["path", "truth", "watermarked", "wm_p_value", "payload", "synthetic", "p_synthetic", "error"])
    return 0


def _progress_log(a: argparse.Namespace):
    """Progress lines go to stderr, and not at all under --json (stdout stays machine-readable)."""
    return None if a.json else (lambda m: print(m, file=sys.stderr))


def _emit_report(report: dict, a: argparse.Namespace, name: str) -> int:
    """An eval command's report: saved as --out/NAME when --out is given, printed as JSON."""
    if a.out:
        from generator.checkpoint import save_json

        save_json(report, Path(a.out) / name)
    print(json.dumps(report) if a.json else json.dumps(report, indent=2))
    return 0


def _load_key(path: str):
    from watermark.keys import load_key

    return load_key(path)


def _print_rows(rows: list[dict], as_json: bool, columns: list[str]) -> None:
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) if rows else len(c) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


NO_EXPERTS_HELP = ("the network judges every file: no edit expert (a tree ensemble on the stroke statistics that "
                   "judges the files the router thinks were JPEG'd, blurred, resized or noised)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddpm-guard", description="DDPM generation, watermarking and synthetic-image detection.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a DDPM on a named data set")
    t.add_argument("--data", default="mnist5k", help="mnist5k, digits or folder:PATH (default mnist5k)")
    t.add_argument("--out", required=True, help="run folder (checkpoints, config.json, train_log.jsonl)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    t.add_argument("--steps", type=_positive_int, default=None, help="total optimiser steps (default 20000)")
    t.add_argument("--batch-size", type=_positive_int, default=128)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--warmup-steps", type=int, default=500)
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--precision", choices=["bf16", "fp32", "auto"], default="bf16",
                   help="auto: bf16 only where the CPU or GPU runs it natively (default bf16, as the bundled model)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=_positive_int, default=1000)
    t.add_argument("--max-minutes", type=_nonnegative_float, default=None,
                   help="stop with a checkpoint after this wall time")
    t.add_argument("--image-size", type=_positive_int, default=None, help="resize the data (default: 28)")
    t.add_argument("--channels", type=int, choices=[1, 3], default=None)
    t.add_argument("--base-channels", type=_positive_int, default=64)
    t.add_argument("--channel-mult", type=_positive_int, nargs="+", default=[1, 2, 2])
    t.add_argument("--num-res-blocks", type=_positive_int, default=2)
    t.add_argument("--attention-resolutions", type=_positive_int, nargs="*", default=[7])
    t.add_argument("--dropout", type=float, default=0.1)
    t.add_argument("--schedule", choices=["linear", "cosine"], default="linear")
    t.add_argument("--unconditional", action="store_true", help="no class conditioning (needed for unlabelled folders)")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate images with a trained model (default: the bundled MNIST model)")
    s.add_argument("--n", type=_positive_int, default=64)
    s.add_argument("--out", required=True, help="folder for one PNG per sample plus grid.png")
    s.add_argument("--sampler", choices=["ddim", "ddpm", "dpmpp2m", "unipc"], default=None,
                   help="ddim (default), ddpm (ancestral), dpmpp2m (DPM-Solver++(2M)) or unipc (UniPC-2): the last two need fewer steps")
    s.add_argument("--fast", action="store_true",
                   help="the fastest bundled configuration within +5 FID of the default (the distilled student; BENCHMARKS.md)")
    s.add_argument("--steps", type=_positive_int, default=None,
                   help="sampling steps (default: 50 for DDIM, all 1000 for DDPM; fewer DDPM steps respace the chain)")
    s.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like")
    s.add_argument("--variance", choices=["beta_tilde", "beta"], default="beta_tilde", help="DDPM sigma^2")
    s.add_argument("--label", type=int, default=None, help="class to draw; default spreads over all classes")
    s.add_argument("--prompt", default=None,
                   help='text prompt, e.g. "a handwritten seven" (needs the [text] extra); off-topic prompts are refused')
    s.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1 = none)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="auto",
                   help="auto (default): bf16 only where the CPU or GPU runs it natively (2.4x on AVX-512 BF16), "
                        "fp32 elsewhere; a forced bf16 on an emulating CPU warns once")
    s.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the bundled model)")
    s.add_argument("--json", action="store_true", help="one JSON line per written file")
    s.add_argument("--watermark-key", default=None, help="key file (ddpm-guard keys new): embed the watermark")
    s.add_argument("--payload", default=None, help="hex payload carried by the watermark, up to 32 bits (default 0)")
    s.add_argument("--guided-mark", action="store_true",
                   help="with --watermark-key: also steer the late steps toward the robust decoder's codeword "
                        "(survives rotation, blur, JPEG; costs visible quality, see BENCHMARKS.md)")
    s.add_argument("--decoder", default=None, metavar="DECODER_DIR",
                   help="with --guided-mark: steer toward this calibrated decoder folder instead of the bundled one "
                        "(keep it private: whoever holds the decoder can copy the mark; README, threat model)")
    s.add_argument("--sign", default=None, metavar="SIGNER_DIR",
                   help="add a signed C2PA manifest and IPTC XMP DigitalSourceType (keys new-signer makes SIGNER_DIR)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval-gen", help="FID/KID/precision/recall/class accuracy/memorization of a generator")
    e.add_argument("--checkpoint", default=None)
    e.add_argument("--n", type=_positive_int, default=1000)
    e.add_argument("--sampler", choices=["ddim", "ddpm", "dpmpp2m", "unipc"], default="ddim")
    e.add_argument("--steps", type=_positive_int, default=50)
    e.add_argument("--guidance", type=float, default=None)
    e.add_argument("--guidance-sweep", type=float, nargs="*", default=[1.0, 1.5, 2.0, 3.0])
    e.add_argument("--step-sweep", type=_positive_int, nargs="*", default=None,
                   help="also FID at these step counts (1000 = DDPM ancestral), with a plot")
    e.add_argument("--sweep-samplers", nargs="+", choices=["ddim", "dpmpp2m", "unipc"], default=["ddim"],
                   help="the ODE samplers the step sweep runs (default ddim)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", default=None, help="folder for eval_gen.json, grids and the plot")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval_gen)

    k = sub.add_parser("keys", help="watermark key files").add_subparsers(dest="keys_command", required=True)
    kn = k.add_parser("new", help="create a 256-bit secret key file with 0600 permissions")
    kn.add_argument("--out", required=True)
    kn.set_defaults(func=cmd_keys_new)
    ks = k.add_parser("new-signer", help="create a local CA and a C2PA signing certificate (private keys 0600)")
    ks.add_argument("--out", required=True, help="folder for ca.pem, ca.key, signer.pem, signer.key")
    ks.add_argument("--organization", default="ddpm-guard", help="the certificate's Organization (O=)")
    ks.set_defaults(func=cmd_keys_new_signer)
    ka = k.add_parser("new-api", help="create an API key for an account of the service; printed once, stored hashed")
    ka.add_argument("--account", required=True)
    ka.add_argument("--home", default=None, help="the service home (default $DDPM_GUARD_HOME or ~/.ddpm-guard)")
    ka.set_defaults(func=cmd_keys_new_api)

    sc = sub.add_parser("scan", help="one verdict per image: our watermark, signed metadata, then the classifier")
    sc.add_argument("paths", nargs="+", help="image files or folders")
    sc.add_argument("--key", action="append", default=[], help="also test this watermark key file (repeatable)")
    sc.add_argument("--trust-anchor", action="append", default=[], help="PEM file of a trusted C2PA CA (repeatable)")
    sc.add_argument("--home", default=None, help="service home whose key ring, trust anchors and accounts to use")
    sc.add_argument("--alpha", type=float, default=None,
                    help="false-positive rate of the watermarked-ours verdict (default 0.001; see BENCHMARKS.md)")
    sc.add_argument("--detector", default=None, help="detector folder (default: the bundled detector)")
    sc.add_argument("--no-watermark", action="store_true", help="skip the watermark check (about 20x faster)")
    sc.add_argument("--watermark-decoder", default=None, metavar="DECODER_DIR",
                    help="read the guided mark with this (private) decoder folder (default: the bundled decoder)")
    sc.add_argument("--json", action="store_true", help="one JSON object per image")
    sc.set_defaults(func=cmd_scan)

    au = sub.add_parser("audit", help="audit a folder or archive for synthetic images: resumable, HTML/JSON/CSV report")
    au.add_argument("path", help="a folder (recursive), a .zip or a .tar(.gz)")
    au.add_argument("--out", required=True, help="report folder; rerun the same command to resume after a crash")
    au.add_argument("--key", action="append", default=[], help="also test this watermark key (the deep check; repeatable)")
    au.add_argument("--watermark", action="store_true",
                    help="the deep watermark check with the home's key ring (DDIM inversion: ~50x slower per file)")
    au.add_argument("--trust-anchor", action="append", default=[], help="PEM of a trusted C2PA CA (repeatable)")
    au.add_argument("--training-set", default=None, help="also the memorization ratio against this data set (e.g. mnist5k)")
    au.add_argument("--engine", choices=["local", "ray"], default="local")
    au.add_argument("--address", default=None, help="join this Ray cluster (default: start a small local Ray)")
    au.add_argument("--workers", type=_positive_int, default=None, help="Ray actors (default 1)")
    au.add_argument("--batch", type=_positive_int, default=256, help="files per scoring batch (default 256)")
    au.add_argument("--home", default=None, help="service home for keys, trust anchors and account names")
    au.add_argument("--alpha", type=float, default=None)
    au.add_argument("--detector", default=None)
    au.add_argument("--watermark-decoder", default=None, metavar="DECODER_DIR",
                    help="read the guided mark with this (private) decoder folder (default: the bundled decoder)")
    au.add_argument("--json", action="store_true", help="print the summary as one JSON line, no progress bar")
    au.set_defaults(func=cmd_audit)

    sv = sub.add_parser("serve", help="run the HTTP service (state in $DDPM_GUARD_HOME, default ~/.ddpm-guard)")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=_int_at_least(1), default=8000)
    sv.add_argument("--home", default=None)
    sv.set_defaults(func=cmd_serve)

    w = sub.add_parser("watermark", help="verify or evaluate the watermark").add_subparsers(dest="wm_command", required=True)
    wv = w.add_parser("verify", help="test images for the watermark of a key")
    wv.add_argument("--key", required=True)
    wv.add_argument("--alpha", type=float, default=0.01, help="false-positive rate of the decision (default 0.01)")
    wv.add_argument("--fast", action="store_true",
                    help="read only the guided mark (no inversion, 1,000+ images/s): for images made with --guided-mark")
    wv.add_argument("--steps", type=_positive_int, default=None, help="DDIM inversion steps (default: measured choice)")
    wv.add_argument("--search", action="store_true",
                    help="also try 24 inverse rotations (25x slower; measured to recover nothing on the bundled model)")
    wv.add_argument("--checkpoint", default=None)
    wv.add_argument("--decoder", default=None, metavar="DECODER_DIR",
                    help="read the guided mark with this decoder folder (the one `sample --decoder` used)")
    wv.add_argument("--json", action="store_true")
    wv.add_argument("paths", nargs="+")
    wv.set_defaults(func=cmd_watermark_verify)

    we = w.add_parser("eval", help="detection power per attack, FPR on unmarked images and other keys, bit accuracy, "
                                   "verify speed, quality")
    we.add_argument("--key", required=True)
    we.add_argument("--n", type=_positive_int, default=500, help="watermarked images per attack")
    we.add_argument("--n-negative", type=_positive_int, default=None,
                    help="unmarked images for the FPR: the 1,000 held-out digits, then unmarked samples "
                         "(default 10,000; 2,000 with --guided, each under every attack)")
    we.add_argument("--guided", action="store_true",
                    help="evaluate the guided mark (sample --guided-mark), read without inversion, instead of the x_T mark")
    we.add_argument("--steps", type=_positive_int, default=None, help="inversion steps (default 10)")
    we.add_argument("--alpha", type=float, default=0.01)
    we.add_argument("--search", action="store_true", help="include the rotation search (slow)")
    we.add_argument("--fid-seeds", type=_nonnegative_int, default=2,
                    help="FID of watermarked vs plain samples over this many seeds, n each (0 skips)")
    we.add_argument("--seed", type=int, default=0)
    we.add_argument("--checkpoint", default=None)
    we.add_argument("--out", default=None, help="folder for watermark_eval.json and the TPR chart")
    we.add_argument("--json", action="store_true")
    we.set_defaults(func=cmd_watermark_eval)

    def app_parser(name: str, help_: str, checkpoint_help: str) -> argparse.ArgumentParser:
        from api.apps import DEFAULT_ETA, DEFAULT_STEPS

        ap = sub.add_parser(name, help=help_)
        ap.add_argument("--image", required=True, help="input image (PNG, JPEG, WebP ...)")
        ap.add_argument("--out", required=True, help="output PNG file")
        ap.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS, help=f"DDNM steps (default {DEFAULT_STEPS})")
        ap.add_argument("--eta", type=float, default=DEFAULT_ETA,
                        help=f"DDIM eta of the run (default {DEFAULT_ETA}; a watermark key forces 0)")
        ap.add_argument("--jump", type=_nonnegative_int, default=None,
                        help="time travel: go back this many steps (RePaint); default 10 for inpaint without a key, else 0")
        ap.add_argument("--repeats", type=_positive_int, default=None,
                        help="time travel: pass each stretch this many times; default 5 for inpaint without a key, else 1")
        ap.add_argument("--seed", type=int, default=0)
        ap.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="auto",
                        help="auto (default): bf16 only where the hardware runs it natively")
        ap.add_argument("--checkpoint", default=None, help=checkpoint_help)
        ap.add_argument("--watermark-key", default=None, help="key file: embed the watermark (deterministic run)")
        ap.add_argument("--payload", default=None, help="hex payload of the watermark, up to 32 bits (default 0)")
        ap.add_argument("--sign", default=None, metavar="SIGNER_DIR",
                        help="sign the output with C2PA + IPTC XMP as an AI edit (keys new-signer makes one)")
        ap.add_argument("--json", action="store_true", help="print one JSON line")
        return ap

    rf = app_parser("refine", "super-resolve (--scale 2|4) or deblur (--deblur SIGMA) an image with DDNM",
                    "model (default: the bundled digit model, 28x28 grey)")
    how = rf.add_mutually_exclusive_group(required=True)
    how.add_argument("--scale", type=int, default=None, help="upscale factor, 2 or 4: the input is model size / scale")
    how.add_argument("--deblur", type=float, default=None, metavar="SIGMA", help="undo a Gaussian blur of this std (pixels)")
    rf.set_defaults(func=cmd_refine)
    ip = app_parser("inpaint", "fill the masked pixels of an image with DDNM; known pixels are kept exactly",
                    "model (default: the bundled digit model, 28x28 grey)")
    ip.add_argument("--mask", required=True,
                    help="mask image (white = fill, black = keep, same size) or a built-in: box, half, strokes")
    ip.set_defaults(func=cmd_inpaint)
    co = app_parser("colorize", "add colour to a grey photo of any size (bundled 32x32 colour model; luma kept exactly)",
                    "colour model (default: the bundled photos32 model)")
    co.add_argument("--samples", type=_positive_int, default=None,
                    help="average the colours of this many runs (default 4 without a key, 1 with one)")
    co.set_defaults(func=cmd_colorize)

    dm = sub.add_parser("demo", help="watermark, verify and detect on a few images; one table")
    dm.add_argument("--out", default="demo-out", help="folder for the demo key and images (default demo-out)")
    dm.add_argument("--json", action="store_true")
    dm.set_defaults(func=cmd_demo)

    d = sub.add_parser("detect", help="score images for diffusion-generated content (files or folders)")
    d.add_argument("paths", nargs="+")
    d.add_argument("--zero-shot", action="store_true",
                   help="add the DIRE reconstruction score and the fused verdict (about 20 generator passes per image)")
    d.add_argument("--detector", default=None, help="detector folder (default: the bundled detector)")
    d.add_argument("--json", action="store_true", help="one JSON object per image")
    d.set_defaults(func=cmd_detect)

    dt = sub.add_parser("detector", help="train or evaluate the detector").add_subparsers(dest="det_command", required=True)
    dtr = dt.add_parser("train", help="train, calibrate and save a detector on any real and fake sources, with a "
                        "leave-one-family-out report")
    dtr.add_argument("--out", required=True, help="folder for model.safetensors, domain.safetensors and config.json")
    dtr.add_argument("--real", action="append", metavar="mnist5k|folder:PATH",
                     help="real images (repeatable; default mnist5k). A folder is split 80/20 into train and calibration")
    dtr.add_argument("--fake-generator", action="append", metavar="RUN_DIR|bundled",
                     help="a generator family to make fakes with (repeatable): a `ddpm-guard train` run, a "
                          "detector.families VAE/GAN folder, or `bundled` (the default when no fake source is given)")
    dtr.add_argument("--fake", action="append", metavar="folder:PATH", help="a folder of fakes made elsewhere (repeatable; "
                     "one family each)")
    dtr.add_argument("--input", choices=["raw", "npr", "both"], default="raw", help="network input (default raw)")
    dtr.add_argument("--background-floor", type=_nonnegative_int, default=32,
                     help="8-bit levels at or below which pixels are set to black before the network (default 32; 0 off)")
    dtr.add_argument("--no-stats", action="store_true",
                     help="CNN only: leave out the stroke-statistics branch (level histogram, core flatness) fused with it")
    dtr.add_argument("--epochs", type=_positive_int, default=100, help="passes over the reals (default 100)")
    dtr.add_argument("--seed", type=int, default=0)
    dtr.add_argument("--augment-p", type=float, default=0.5,
                     help="probability of each augmentation per image, the same for both classes (default 0.5)")
    dtr.add_argument("--stay-positive", action="store_true",
                     help="clamp the last layer's weights to >= 0 (Rajan & Lee 2025): only evidence of 'synthetic' counts")
    dtr.add_argument("--no-loo", action="store_true", help="skip the leave-one-family-out report (one training per family)")
    dtr.add_argument("--loo-epochs", type=_positive_int, default=40, help="epochs of each leave-one-out run (default 40)")
    dtr.add_argument("--zero-shot", action="store_true", help="also fit the DIRE fusion (bundled generator; slow)")
    dtr.add_argument("--no-experts", action="store_true", help=NO_EXPERTS_HELP)
    _fake_cache_argument(dtr)
    dtr.set_defaults(func=cmd_detector_train)
    dca = dt.add_parser("calibrate", help="refit a trained detector's calibration (Platt, the threshold, the edit "
                        "router and its expert, the out-of-domain score) on the same sources and seed as its training; the network is "
                        "kept")
    dca.add_argument("--detector", default=None, help="detector folder (default: the bundled detector; then give --out)")
    dca.add_argument("--out", default=None, help="where to save (default: --detector, rewritten)")
    dca.add_argument("--real", action="append", metavar="mnist5k|folder:PATH", help="as for `detector train`")
    dca.add_argument("--fake-generator", action="append", metavar="RUN_DIR|bundled",
                     help="as for `detector train`, in the same order (it fixes the calibration draws)")
    dca.add_argument("--fake", action="append", metavar="folder:PATH", help="as for `detector train`")
    dca.add_argument("--seed", type=int, default=0, help="the training seed (default 0)")
    dca.add_argument("--no-route", action="store_true", help="one threshold for every image: no edit router (and so "
                     "no edit expert)")
    dca.add_argument("--no-experts", action="store_true", help=NO_EXPERTS_HELP)
    _fake_cache_argument(dca)
    dca.set_defaults(func=cmd_detector_calibrate)
    dev = dt.add_parser("eval", help="per family x perturbation: AUC, TPR@1%%FPR, real FPR at the stored threshold; "
                        "out-of-domain table, reliability diagram, ROC plot")
    dev.add_argument("--detector", default=None)
    dev.add_argument("--fake-generator", action="append", metavar="RUN_DIR|bundled",
                     help="families to evaluate on (repeatable; default: the ones the detector trained on)")
    dev.add_argument("--fake", action="append", metavar="folder:PATH", help="a folder of fakes (repeatable)")
    dev.add_argument("--unseen-generator", action="append", metavar="RUN_DIR",
                     help="a generator family the detector never trained on (repeatable): the honest 'unseen' row")
    dev.add_argument("--zero-shot-n", type=_nonnegative_int, default=0, help="fakes per source for the DIRE comparison (0 skips)")
    dev.add_argument("--seed", type=int, default=0)
    dev.add_argument("--out", default=None, help="folder for detector_eval.json, detector_roc.png, detector_reliability.png")
    dev.add_argument("--json", action="store_true")
    _fake_cache_argument(dev)
    dev.set_defaults(func=cmd_detector_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if getattr(a, "guidance", "absent") is None and not getattr(a, "fast", False):  # --fast: its own measured scale
        from generator.pipeline import DEFAULT_GUIDANCE

        a.guidance = DEFAULT_GUIDANCE
    try:
        return a.func(a)
    except GuardError as e:
        print(f"ddpm-guard: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddpm-guard: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ddpm-guard scan --json ... | head`: the reader left; not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
