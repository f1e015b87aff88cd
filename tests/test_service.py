"""The HTTP service and the scan behind it: routes with tiny models swapped in, hardened input, auth,
rate limit, metrics, the signed round trip, and a bounded schemathesis run over the OpenAPI schema."""

from __future__ import annotations

import base64
import json
import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from ddpm_guard.api.runtime import Runtime, load_key_ring, prepare_home
from ddpm_guard.api.scan import Scanner
from ddpm_guard.api.service import create_app
from ddpm_guard.api.settings import load_settings
from ddpm_guard.api.store import Store
from ddpm_guard.detector.calibrate import Platt
from ddpm_guard.detector.model import DetectorConfig, DetectorNet
from ddpm_guard.detector.predict import Detector
from ddpm_guard.generator.checkpoint import load_model
from ddpm_guard.generator.image_io import decode_image
from ddpm_guard.provenance.c2pa import load_signer, load_trust_anchors


def _enc(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _digit(v: int = 0) -> Image.Image:
    arr = np.zeros((28, 28), np.uint8)
    arr[6:22, 12:16] = 255 - v
    return Image.fromarray(arr)


def _bomb_header(w: int, h: int) -> bytes:
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"IEND", b"")


def tamper_pixels(png: bytes) -> bytes:
    """Change one pixel of an 8-bit grey PNG and re-emit valid chunks (CRCs right), every other chunk
    (the C2PA manifest included) untouched: a decodable file whose content no longer matches its manifest."""
    pos, chunks = 8, []
    while pos < len(png):
        n = struct.unpack(">I", png[pos:pos + 4])[0]
        chunks.append((png[pos + 4:pos + 8], png[pos + 8:pos + 8 + n]))
        pos += 12 + n
    raw = bytearray(zlib.decompress(b"".join(d for t, d in chunks if t == b"IDAT")))
    raw[1 + 29 * 14 + 14] ^= 0x40  # row 14, column 14 (each row: one filter byte + 28 pixels)
    out, done = [b"\x89PNG\r\n\x1a\n"], False
    for t, d in chunks:
        if t == b"IDAT":
            if done:
                continue
            d, done = zlib.compress(bytes(raw)), True
        out.append(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF))
    return b"".join(out)


def tiny_detector() -> Detector:
    torch.manual_seed(0)
    net = DetectorNet(DetectorConfig(layers=(1, 1, 1, 1), channels=(4, 4, 4, 4)))
    return Detector(net, Platt(1.0, 0.0), 0.5)


def make_runtime(home, generator_dir, **overrides) -> Runtime:
    settings = load_settings(home, **{"rate_limit_per_minute": 0, "max_body_bytes": 300_000, "max_files": 4,
                                      "max_generate": 4, "batch_window_ms": 2.0, **overrides})
    prepare_home(settings)
    store = Store(settings.db_url)
    model, schedule, _ = load_model(generator_dir, device="cpu")
    ring = load_key_ring(settings.keys_dir)
    scanner = Scanner(tiny_detector(), model, schedule, ring, load_trust_anchors(settings.anchor_files()), 0.01,
                      store.account_name)
    return Runtime(settings, store, scanner, model, schedule, load_signer(settings.signer_dir), ring["service"])


def fixed_service_key(home, secret: bytes) -> None:
    """A fixed service key (0600) in a new home: whether a test's images clear alpha is then settled once,
    not redrawn with a random key on every run."""
    import os

    from ddpm_guard.watermark.keys import HEADER

    (home / "keys").mkdir(mode=0o700)
    fd = os.open(home / "keys" / "service.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, f"{HEADER}\n{secret.hex()}\n".encode())
    os.close(fd)


@pytest.fixture(scope="module")
def svc(tmp_path_factory, trained_tiny):
    # fixed key: with a random one, the three out-of-domain images of test_out_of_domain_inputs_... were
    # called watermarked-ours in about 3 % of runs (the tests' scanner runs at alpha 0.01 per image; it
    # happened once in CI)
    home = tmp_path_factory.mktemp("home")
    fixed_service_key(home, bytes(range(100, 132)))
    rt = make_runtime(home, trained_tiny[0])
    _, key = rt.store.new_api_key("alice")
    with TestClient(create_app(runtime=rt)) as client:
        yield client, {"X-API-Key": key}, rt


def _scan(client, headers, files):
    return client.post("/v1/scan", headers=headers, files=[("files", f) for f in files])


def test_health_ready_metrics_and_docs(svc):
    client, _, _ = svc
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/scan" in paths and "/v1/generate" in paths and "/metrics" not in paths
    text = client.get("/metrics").text
    assert "http_requests_total" in text and "http_request_duration_seconds_bucket" in text


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "dg_00000000_wrong"}, {"Authorization": "Bearer nope"},
                                     {"Authorization": "Basic dXNlcjpwYXNz"}])
def test_missing_or_wrong_key_is_401_and_never_echoed(svc, headers):
    client, _, _ = svc
    r = _scan(client, headers, [("a.png", _enc(_digit()))])
    assert r.status_code == 401
    assert "wrong" not in r.text and "nope" not in r.text


def test_bearer_and_header_keys_both_work(svc):
    client, headers, _ = svc
    bearer = {"Authorization": "Bearer " + headers["X-API-Key"]}
    for h in (headers, bearer):
        r = _scan(client, h, [("a.png", _enc(_digit()))])
        assert r.status_code == 200 and r.json()["results"][0]["verdict"] in ("synthetic", "likely-real")


def test_stored_key_is_a_hash_not_the_key(svc):
    _, headers, rt = svc
    from ddpm_guard.api.store import ApiKeyRow
    with rt.store.session() as s:
        hashes = [row.key_hash for row in s.query(ApiKeyRow).all()]
    assert headers["X-API-Key"] not in hashes and all(len(h) == 64 for h in hashes)


def test_rate_limit_answers_429_with_retry_after(tmp_path, trained_tiny):
    rt = make_runtime(tmp_path, trained_tiny[0], rate_limit_per_minute=2)
    _, key = rt.store.new_api_key("bob")
    with TestClient(create_app(runtime=rt)) as client:
        codes = [_scan(client, {"X-API-Key": key}, [("a.png", _enc(_digit()))]) for _ in range(3)]
    assert [c.status_code for c in codes] == [200, 200, 429]
    assert int(codes[2].headers["Retry-After"]) >= 1


def test_body_limit_and_file_count_limit(svc):
    client, headers, _ = svc
    big = _scan(client, headers, [("big.png", b"\0" * 400_000)])
    assert big.status_code == 413 and "limit" in big.json()["detail"]
    many = _scan(client, headers, [(f"{i}.png", _enc(_digit())) for i in range(5)])
    assert many.status_code == 413 and "at most 4 files" in many.json()["detail"]


@pytest.mark.parametrize("name,data,reason", [
    ("bomb.png", _bomb_header(20000, 20000), "pixel"),
    ("trunc.png", _enc(_digit())[:-30], "corrupt or truncated"),
    ("notes.txt", b"hello, not an image", "not an image"),
    ("empty.png", b"", "empty"),
])
def test_a_lone_unreadable_file_is_a_422_with_its_reason(svc, name, data, reason):
    client, headers, _ = svc
    r = _scan(client, headers, [(name, data)])
    assert r.status_code == 422 and reason in r.json()["detail"]


def test_scan_rows_name_the_edit_they_were_judged_for(svc):
    """A classifier verdict names the benign edit the router guessed and the threshold it was judged at; the
    service's tiny detector has no router, so its rows say edit null and name none. Rows of the bundled
    detector carry one of its router's edits."""
    from ddpm_guard.api.scan import _EDIT_WORDS, decide
    from ddpm_guard.detector.data import perturb_for_calibration, real_split
    from ddpm_guard.detector.predict import load_detector

    client, headers, _ = svc
    rows = _scan(client, headers, [("d.png", _enc(_digit(0)))]).json()["results"]
    assert rows[0]["edit"] is None and "edit expert" not in rows[0]["explanation"]
    clean = {"c2pa": {"status": None, "digital_source_type": None, "present": False}, "iptc_digital_source_type": None}
    for synthetic in (False, True):
        row = {"watermark": {"detected": False}, "metadata": clean, "in_domain": True, "synthetic": synthetic,
               "p_synthetic": 0.9 if synthetic else 0.3, "threshold": 0.864, "edit": "jpeg"}
        verdict, text, _ = decide(row, None)
        assert verdict == ("synthetic" if synthetic else "likely-real")
        assert f"0.86 for {_EDIT_WORDS['jpeg']}" in text
    det = load_detector(device="cpu")
    g = torch.Generator().manual_seed(0)
    edits = det.score(perturb_for_calibration(real_split("heldout")[:64], "jpeg", g))["edit"]
    assert set(edits) <= set(det.router.edits) and (edits == "jpeg").mean() > 0.5


def test_odd_but_valid_images_are_scored(svc):
    client, headers, _ = svc
    cmyk = _enc(Image.new("CMYK", (28, 28), (0, 0, 0, 255)), "JPEG")
    i16 = _enc(Image.fromarray(np.full((28, 28), 1000, np.uint16)))
    frames = [_digit(0).convert("P"), _digit(100).convert("P")]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    files = [("cmyk.jpg", cmyk), ("deep.png", i16), ("anim.gif", buf.getvalue()), ("bad.png", b"garbage")]
    rows = _scan(client, headers, files).json()["results"]
    assert [r["path"] for r in rows] == [f[0] for f in files]
    assert [r["verdict"] == "unreadable" for r in rows] == [False, False, False, True]
    assert rows[0]["image"] == {"format": "JPEG", "width": 28, "height": 28}
    assert all(r["explanation"] for r in rows)


def test_out_of_domain_inputs_get_their_own_verdict(svc):
    client, headers, _ = svc
    colour = np.zeros((28, 28, 3), np.uint8)
    colour[..., 0] = 200
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8))
    white = Image.fromarray(np.full((28, 28), 240, np.uint8))
    rows = _scan(client, headers, [("red.png", _enc(Image.fromarray(colour))), ("photo.png", _enc(photo)),
                                   ("page.png", _enc(white))]).json()["results"]
    assert [r["verdict"] for r in rows] == ["out-of-domain"] * 3
    assert "colour" in rows[0]["explanation"] and "300x300" in rows[1]["explanation"]


def test_generate_watermarks_signs_and_scans_back_as_ours(svc):
    client, headers, rt = svc
    bad = client.post("/v1/generate", headers=headers, json={"n": 1, "label": 99})
    assert bad.status_code == 400 and "unknown label" in bad.json()["detail"]
    assert client.post("/v1/generate", headers=headers, json={"n": 99}).status_code == 400
    assert client.post("/v1/generate", json={"n": 1}).status_code == 401
    # the decoder reads 28x28 digits; the tiny model's 8x8 images cannot carry the guided mark: a clear 400
    guided = client.post("/v1/generate", headers=headers, json={"n": 1, "steps": 2, "guided_mark": True})
    assert guided.status_code == 400 and "does not read this model's images" in guided.json()["detail"]
    r = client.post("/v1/generate", headers=headers, json={"n": 2, "seed": 3, "steps": 10})
    assert r.status_code == 200
    body = r.json()
    assert body["guided_mark"] is False
    assert body["account"] == "alice" and len(body["images"]) == 2
    acc = rt.store.authenticate(headers["X-API-Key"])
    assert all(im["payload"] == f"{acc.id:08x}" for im in body["images"])
    pngs = [base64.b64decode(im["png_base64"]) for im in body["images"]]
    rows = _scan(client, headers, [(f"g{i}.png", p) for i, p in enumerate(pngs)]).json()["results"]
    for row in rows:  # the tiny model's watermark is weak: the signed manifest carries the verdict here
        assert row["metadata"]["c2pa"]["status"] == "Trusted"
        assert row["verdict"] in ("watermarked-ours", "signed-synthetic") and row["account"] == "alice"
    z = client.post("/v1/generate", headers={**headers, "Accept": "application/zip"}, json={"n": 2, "seed": 3, "steps": 10})
    assert z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        zipped = [zf.read(n) for n in sorted(zf.namelist())]
    # same seed, same pixels (the manifests differ: each signature has its own instance id)
    assert [np.asarray(decode_image(p)).tolist() for p in zipped] == [np.asarray(decode_image(p)).tolist() for p in pngs]


def test_signed_round_trip_with_the_bundled_model(tmp_path):
    """End to end with the bundled generator and detector: made by the service, scanned as ours with a
    Trusted manifest naming the account; stripped of metadata, the watermark still decides; a tampered
    file's manifest reads Invalid and does not decide."""
    from ddpm_guard.detector.predict import load_detector

    # a fixed service key: clean detection is ~80 % per image (BENCHMARKS.md)
    fixed_service_key(tmp_path, bytes(range(32)))
    rt = make_runtime(tmp_path, None)
    rt.scanner = Scanner(load_detector(device="cpu"), rt.model, rt.schedule, rt.scanner.keys,
                         rt.scanner.trust_anchors, 0.01, rt.store.account_name)
    _, key = rt.store.new_api_key("carol")
    with TestClient(create_app(runtime=rt)) as client:
        headers = {"X-API-Key": key}
        made = client.post("/v1/generate", headers=headers, json={"n": 2, "seed": 1}).json()["images"]
        fast = client.post("/v1/generate", headers=headers, json={"n": 2, "seed": 1, "fast": True})
        assert fast.status_code == 200
        fast_rows = _scan(client, headers, [(f"f{i}.png", base64.b64decode(m["png_base64"]))
                                            for i, m in enumerate(fast.json()["images"])]).json()["results"]
        both = client.post("/v1/generate", headers=headers, json={"n": 1, "fast": True, "steps": 10})
        # the guided mark: rotated a quarter turn and re-saved as JPEG q50 (metadata gone), still ours
        g = client.post("/v1/generate", headers=headers, json={"n": 1, "seed": 2, "steps": 20, "guided_mark": True})
        assert g.status_code == 200 and g.json()["guided_mark"] is True
        edited = _enc(decode_image(base64.b64decode(g.json()["images"][0]["png_base64"])).rotate(90), "JPEG",
                      quality=50)
        guided_row = _scan(client, headers, [("g.jpg", edited)]).json()["results"][0]
        assert both.status_code == 400 and "fast picks its own steps" in both.json()["detail"]
        pngs = [base64.b64decode(m["png_base64"]) for m in made]
        stripped = [_enc(decode_image(p)) for p in pngs]
        tampered = tamper_pixels(pngs[0])
        files = [("a.png", pngs[0]), ("b.png", pngs[1]), ("a_stripped.png", stripped[0]),
                 ("b_stripped.png", stripped[1]), ("a_tampered.png", tampered)]
        rows = {r["path"]: r for r in _scan(client, headers, files[:4]).json()["results"]}
        rows.update({r["path"]: r for r in _scan(client, headers, files[4:]).json()["results"]})
    for row in fast_rows:  # the distilled student's images: signed and marked for the account like any other
        assert row["metadata"]["c2pa"]["status"] == "Trusted" and row["account"] == "carol"
        assert row["verdict"] in ("watermarked-ours", "signed-synthetic")
    assert guided_row["metadata"]["c2pa"]["present"] is False
    assert guided_row["verdict"] == "watermarked-ours", guided_row  # (the account needs the payload: often lost)
    for name in ("a.png", "b.png"):
        assert rows[name]["verdict"] == "watermarked-ours"
        assert rows[name]["metadata"]["c2pa"]["status"] == "Trusted" and rows[name]["account"] == "carol"
    for name in ("a_stripped.png", "b_stripped.png"):
        assert rows[name]["metadata"]["c2pa"]["present"] is False
        assert rows[name]["verdict"] == "watermarked-ours" and "no C2PA manifest" in rows[name]["explanation"]
    assert rows["a_tampered.png"]["metadata"]["c2pa"]["status"] == "Invalid"
    # an Invalid manifest never decides (PNG row filters spread the edited byte along its rows, so the
    # content changed more than one pixel, and whether the weak v1 mark survives is not what this tests)
    assert rows["a_tampered.png"]["verdict"] != "signed-synthetic"


def test_concurrent_scans_share_one_batched_call():
    import asyncio

    from ddpm_guard.api.batching import Batcher

    calls = []

    def fn(items, ctx):
        calls.append(list(items))
        return [(ctx, it * 10) for it in items]

    async def main():
        b = Batcher(fn, window_ms=50, max_batch=64)
        await b.start()
        try:
            return await asyncio.gather(b.submit([1, 2], "c"), b.submit([3], "c"), b.submit([4, 5, 6], "c"))
        finally:
            await b.stop()

    out = asyncio.run(main())
    assert out == [[("c", 10), ("c", 20)], [("c", 30)], [("c", 40), ("c", 50), ("c", 60)]]
    assert len(calls) == 1 and sorted(calls[0]) == [1, 2, 3, 4, 5, 6]


def test_no_key_or_secret_reaches_the_logs(svc, caplog):
    client, headers, _ = svc
    import logging
    with caplog.at_level(logging.DEBUG):
        _scan(client, headers, [("a.png", _enc(_digit()))])
        _scan(client, {"X-API-Key": "dg_deadbeef_secretattempt"}, [("a.png", _enc(_digit()))])
    assert headers["X-API-Key"] not in caplog.text and "secretattempt" not in caplog.text


def test_schemathesis_finds_no_server_error(svc):
    """Property-based requests from the OpenAPI schema (bounded), sent through the running test client
    (one app lifespan, as in production): no route answers 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    client, headers, _ = svc
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    failures, codes = [], []
    for op in schema.get_all_operations():
        operation = op.ok()

        @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            kw = case.as_transport_kwargs(base_url="http://testserver", headers=headers)
            kw.pop("timeout", None)
            resp = client.request(**kw)
            codes.append((operation.label, resp.status_code))
            if resp.status_code >= 500:
                failures.append((operation.label, resp.status_code, resp.text[:200]))

        run()
    assert failures == []
    ops = {label for label, _ in codes}
    assert {"POST /v1/scan", "POST /v1/generate", "POST /v1/audit", "GET /healthz", "GET /readyz"} <= ops, ops
    assert any(c == 200 for label, c in codes if label == "POST /v1/generate")  # fuzzing reached the model


def _zip_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def _wait_done(client, headers, job_id, timeout=120):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/v1/audit/{job_id}", headers=headers).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"audit job {job_id} did not finish: {job}")


def test_audit_job_over_the_service(svc):
    client, headers, rt = svc
    archive = _zip_of({"a/real.png": _enc(_digit()), "b/other.png": _enc(_digit(40)), "notes.txt": b"hi",
                       "../evil.png": _enc(_digit())})
    assert client.post("/v1/audit", headers=headers, files={"archive": ("x.rar", b"...")}).status_code == 400
    assert client.post("/v1/audit", files={"archive": ("d.zip", archive)}).status_code == 401
    r = client.post("/v1/audit", headers=headers, files={"archive": ("d.zip", archive)})
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running", "done")
    job = _wait_done(client, headers, r.json()["id"])
    assert job["status"] == "done" and job["total"] == 4 and set(job["reports"]) == {"report.html", "report.json", "report.csv"}
    report = client.get(job["reports"]["report.json"], headers=headers).json()
    assert report["summary"]["input"] == "d.zip"  # the upload's name, never the server's path
    assert all(r["path"].startswith("d.zip!") for r in report["rows"])
    assert str(rt.settings.home) not in client.get(job["reports"]["report.html"], headers=headers).text
    assert report["summary"]["files"] == 4 and report["summary"]["counts"]["unreadable"] == 2
    assert client.get(job["reports"]["report.html"], headers=headers).headers["content-type"].startswith("text/html")
    _, other = rt.store.new_api_key("mallory")  # another account sees nothing
    assert client.get(f"/v1/audit/{job['id']}", headers={"X-API-Key": other}).status_code == 404
    assert client.get(job["reports"]["report.json"], headers={"X-API-Key": other}).status_code == 404


def test_an_interrupted_audit_job_resumes_when_the_service_starts_again(tmp_path, trained_tiny):
    from ddpm_guard.api.audit import run_audit
    from ddpm_guard.api.audit.engine import ScanSpec
    from ddpm_guard.api.audit_jobs import job_dir
    from ddpm_guard.api.store import AuditJobs

    rt = make_runtime(tmp_path / "home", trained_tiny[0])
    account, key = rt.store.new_api_key("zoe")
    files = {f"d/{i:02d}.png": _enc(_digit(i * 7)) for i in range(12)}
    jobs = AuditJobs(rt.store)
    job_id = jobs.create(account, "d.zip", False)
    folder = job_dir(rt.settings, job_id)
    folder.mkdir(parents=True)
    (folder / "input.zip").write_bytes(_zip_of(files))
    spec = ScanSpec(detector=None, device="cpu")
    # the service died after 4 of 12 files: journal written, job left "running"
    assert run_audit(folder / "input.zip", folder / "report", spec, batch=4, progress=False, stop_after=4,
                     label="d.zip") == {"stopped_after": 4}
    jobs.update(job_id, status="running")
    with TestClient(create_app(runtime=rt)) as client:
        job = _wait_done(client, {"X-API-Key": key}, job_id)
    assert job["status"] == "done" and job["done"] == 12
    journal = (folder / "report" / "journal.jsonl").read_text().splitlines()
    assert len(journal) == 12  # nothing scored twice
    (tmp_path / "fresh.zip").write_bytes(_zip_of(files))
    run_audit(tmp_path / "fresh.zip", tmp_path / "fresh", spec, progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("path", "explanation", "error")} for r in rows]  # noqa: E731
    resumed = json.loads((folder / "report" / "report.json").read_text())["rows"]
    fresh = json.loads((tmp_path / "fresh" / "report.json").read_text())["rows"]
    assert strip(resumed) == strip(fresh)


def test_domain_gate_flags_photographs_and_passes_real_digits():
    """DomainRules: every skimage photograph is out of domain; at most 1 % of held-out real digits are."""
    import glob
    import os

    import skimage

    from ddpm_guard.detector.domain import DomainRules
    from ddpm_guard.generator.data import load_dataset
    from ddpm_guard.generator.image_io import to_uint8

    rules = DomainRules()
    photos = sorted(glob.glob(os.path.join(os.path.dirname(skimage.__file__), "data", "*.png")))
    assert len(photos) >= 10
    decoded = [decode_image(open(p, "rb").read(), max_pixels=10**8) for p in photos]
    assert all(not rules.check(img, 28)[0] for img in decoded)
    held = load_dataset("mnist5k", "heldout").images
    flagged = sum(not rules.check(Image.fromarray(to_uint8(x)), 28)[0] for x in held)
    assert flagged <= len(held) // 100


def _small(v: int = 200, size: int = 4) -> bytes:
    arr = np.zeros((size, size), np.uint8)
    arr[:, size // 2:] = v
    return _enc(Image.fromarray(arr))


def test_applications_are_watermarked_signed_edits_for_the_account(svc, tmp_path):
    client, headers, rt = svc
    acc = rt.store.authenticate(headers["X-API-Key"])
    r = client.post("/v1/refine", headers=headers, files={"image": ("s.png", _small())}, data={"scale": "2", "steps": "5", "seed": "1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["application"], body["width"], body["height"], body["payload"]) == ("refine", 8, 8, f"{acc.id:08x}")
    png = base64.b64decode(body["png_base64"])
    from ddpm_guard.provenance.c2pa import read_metadata

    meta = read_metadata(png, rt.scanner.trust_anchors)
    assert meta["c2pa"]["status"] == "Trusted"
    assert meta["c2pa"]["digital_source_type"] == "compositeWithTrainedAlgorithmicMedia"
    assert meta["c2pa"]["assertion"]["application"] == "refine" and meta["c2pa"]["assertion"]["account"] == "alice"
    # the scan calls such a file AI-made (a trusted manifest says so) and names the account
    row = _scan(client, headers, [("r.png", png)]).json()["results"][0]
    assert row["verdict"] in ("watermarked-ours", "signed-synthetic") and row["account"] == "alice"
    img = _enc(_digit().resize((8, 8)))
    r = client.post("/v1/inpaint", headers={**headers, "Accept": "image/png"}, files={"image": ("d.png", img)},
                    data={"shape": "half", "steps": "5", "seed": "2"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-ddpm-guard-payload"] == f"{acc.id:08x}"
    out, inp = np.asarray(decode_image(r.content)), np.asarray(decode_image(img))
    assert (out[:, :4] == inp[:, :4]).all()  # the kept half, exactly
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    r = client.post("/v1/inpaint", headers=headers, files={"image": ("d.png", img), "mask": ("m.png", _enc(Image.fromarray(mask)))},
                    data={"steps": "5"})
    assert r.status_code == 200, r.text
    r = client.post("/v1/refine", headers=headers, files={"image": ("b.png", img)}, data={"deblur": "1.0", "steps": "5"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("route,files,data,match", [
    ("/v1/refine", {"image": ("s.png", b"not an image")}, {"scale": "2"}, "not an image in an allowed format"),
    ("/v1/refine", {"image": ("s.png", _small(size=8))}, {"scale": "2"}, "must be 4x4"),
    ("/v1/refine", {"image": ("s.png", _small())}, {}, "exactly one of --scale and --deblur"),
    ("/v1/inpaint", {"image": ("d.png", _small(size=8))}, {}, "exactly one of mask"),
    ("/v1/inpaint", {"image": ("d.png", _small(size=8)), "mask": ("m.png", _small(0, size=8))}, {}, "mask is empty"),
    ("/v1/inpaint", {"image": ("d.png", _small(size=8)), "mask": ("m.png", _small(size=6))}, {}, "same size"),
    ("/v1/refine", {"image": ("s.png", _small())}, {"scale": "2", "steps": "900"}, "steps must be between"),
])
def test_application_mistakes_are_400_with_one_message(svc, route, files, data, match):
    client, headers, _ = svc
    r = client.post(route, headers=headers, files=files, data=data)
    assert r.status_code in (400, 422), r.text
    assert match in r.text and "Traceback" not in r.text


def test_colorize_route_keeps_the_grey_levels(svc, tmp_path):
    client, headers, rt = svc
    assert client.post("/v1/colorize", headers=headers, files={"image": ("g.png", _small())}).status_code in (200, 400)
    from ddpm_guard.generator.checkpoint import save_model
    from ddpm_guard.generator.config import DiffusionConfig
    from ddpm_guard.generator.unet import UNet
    from tests.conftest import tiny_unet

    torch.manual_seed(0)
    save_model(tmp_path / "rgb", UNet(tiny_unet(in_channels=3, num_classes=None)), DiffusionConfig())
    old, rt.color = rt.color, load_model(tmp_path / "rgb", device="cpu")[:2]
    try:
        grey = (np.arange(12 * 20).reshape(12, 20) % 256).astype(np.uint8)
        r = client.post("/v1/colorize", headers=headers, files={"image": ("g.png", _enc(Image.fromarray(grey)))},
                        data={"steps": "5", "seed": "0"})
        assert r.status_code == 200, r.text
        out = decode_image(base64.b64decode(r.json()["png_base64"]))
        assert out.mode == "RGB" and out.size == (20, 12)
        assert np.abs(np.asarray(out.convert("L")).astype(int) - grey).max() <= 1
    finally:
        rt.color = old


def test_generate_with_a_prompt_and_refusal(svc):
    pytest.importorskip("sentence_transformers")
    client, headers, _ = svc
    r = client.post("/v1/generate", headers=headers, json={"n": 1, "steps": 5, "seed": 0, "prompt": "a handwritten seven"})
    assert r.status_code == 200 and r.json()["images"][0]["label"] == 7
    r = client.post("/v1/generate", headers=headers, json={"n": 1, "prompt": "a photo of a cat"})
    assert r.status_code == 400 and "cannot draw" in r.json()["detail"]
    r = client.post("/v1/generate", headers=headers, json={"n": 1, "prompt": "a seven", "label": 3})
    assert r.status_code == 400
