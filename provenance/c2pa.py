"""Signed provenance metadata: a C2PA manifest and an IPTC XMP DigitalSourceType on generated PNGs.

What industry reads today. Both are *metadata*: any re-save, screenshot or upload pipeline that
re-encodes drops them, which is why the watermark and the classifier exist. The scan reads them
first because, when they survive and validate, they are cheap and precise.

Signing (c2pa-python): `Builder.set_intent(CREATE, TRAINED_ALGORITHMIC_MEDIA)` plus one assertion
of ours (`org.ddpm-guard.generation`: account, payload, key label). C2PA refuses a self-signed leaf,
so `new_signer` makes a local CA and a leaf with an Organization and the emailProtection EKU.

Reading: `read_metadata(bytes, trust_anchors)` gives
  {c2pa: {present, status: Trusted|Valid|Invalid|None, digital_source_type, signer, assertion, error},
   iptc_digital_source_type}
- Trusted: the signature and every hash verify and the chain ends in one of `trust_anchors`;
- Valid: all verifies, but the chain ends in no anchor we trust;
- Invalid: a hash or signature failed (a tampered file), or the manifest cannot be parsed.
The private keys live in 0600 files and are never printed; `ManifestSigner` hides them in repr.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.fsutil import atomic_write_bytes
from ddpm_guard.generator.image_io import sniff_format

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
# an image a model has edited (inpainted, restored, colorized): the IPTC term for "real content with AI parts"
COMPOSITE_TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
AI_SOURCE_TYPES = ("trainedAlgorithmicMedia", "compositeSynthetic", "algorithmicMedia",
                   "compositeWithTrainedAlgorithmicMedia")
ASSERTION_LABEL = "org.ddpm-guard.generation"
SIGNER_FILES = ("ca.pem", "ca.key", "signer.pem", "signer.key")
_XMP_RE = re.compile(rb"<x:xmpmeta.*?</x:xmpmeta>", re.S)
_DST_RE = re.compile(rb"DigitalSourceType(?:=\"|>)\s*([^\"<\s]+)")


@dataclass(frozen=True)
class ManifestSigner:
    """A signing chain (leaf + CA, PEM) and the leaf's private key. The key never shows in repr."""
    chain_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pem: bytes = field(repr=False, default=b"")
    organization: str = ""

    def __reduce__(self):
        raise TypeError("signers hold a private key and cannot be pickled")


def _write_secret(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, mode=0o600)


def new_signer(folder: str | os.PathLike, organization: str = "ddpm-guard", *, overwrite: bool = False,
               days: int = 825) -> ManifestSigner:
    """Create a local CA and a leaf certificate for C2PA signing under `folder`.

    Files: ca.pem (the trust anchor to hand to verifiers), ca.key (0600), signer.pem (leaf + CA
    chain), signer.key (0600). ES256 (P-256) keys; the leaf carries O=organization, digitalSignature
    and the emailProtection EKU, which C2PA's default trust profile accepts."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(folder)
    if not overwrite and any((out / f).exists() for f in SIGNER_FILES):
        raise GuardError(f"{out} already holds a signer; refusing to overwrite it (delete it first if you mean to)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GuardError(f"{out}: cannot create the signer folder ({e.strerror})") from None
    if not organization.strip():
        raise GuardError("the signer needs a non-empty organization name")
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)])

    def usage(sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                             encipher_only=False, decipher_only=False)

    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name(f"{organization} local C2PA CA")).issuer_name(name(f"{organization} local C2PA CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + _dt.timedelta(days=days * 4))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(False, True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name(f"{organization} C2PA signer")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + _dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(True, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = lambda c: c.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    key = lambda k: k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # noqa: E731
                                    serialization.NoEncryption())
    _write_secret(out / "ca.key", key(ca_key))
    _write_secret(out / "signer.key", key(leaf_key))
    atomic_write_bytes(out / "ca.pem", pem(ca), mode=0o644)
    atomic_write_bytes(out / "signer.pem", pem(leaf) + pem(ca), mode=0o644)
    return ManifestSigner(pem(leaf) + pem(ca), key(leaf_key), pem(ca), organization)


def load_signer(folder: str | os.PathLike) -> ManifestSigner:
    d = Path(folder)
    chain, key = d / "signer.pem", d / "signer.key"
    if not chain.is_file() or not key.is_file():
        raise GuardError(f"{d}: no C2PA signer here (create one with `ddpm-guard keys new-signer --out {d}`)")
    mode = stat.S_IMODE(key.stat().st_mode)
    if mode & 0o077:
        raise GuardError(f"{key}: permissions {oct(mode)} are too open; run `chmod 600 {key}`")
    ca = (d / "ca.pem").read_bytes() if (d / "ca.pem").is_file() else b""
    org = ""
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID

        cert = x509.load_pem_x509_certificate(chain.read_bytes())
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        org = str(orgs[0].value) if orgs else ""
    except ValueError:
        raise GuardError(f"{chain}: not a PEM certificate chain") from None
    return ManifestSigner(chain.read_bytes(), key.read_bytes(), ca, org)


def xmp_packet(source_type: str = TRAINED_ALGORITHMIC_MEDIA) -> bytes:
    """A minimal XMP packet carrying IPTC's Iptc4xmpExt:DigitalSourceType."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'Iptc4xmpExt:DigitalSourceType="{source_type}"/>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="r"?>'
    ).encode()


def add_xmp_png(png: bytes, source_type: str = TRAINED_ALGORITHMIC_MEDIA) -> bytes:
    """Re-emit a PNG with an uncompressed iTXt XML:com.adobe.xmp chunk. Pixels are unchanged."""
    from PIL import Image, PngImagePlugin

    img = Image.open(io.BytesIO(png), formats=["PNG"])
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp_packet(source_type).decode(), zip=False)
    buf = io.BytesIO()
    img.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _c2pa_context(trust_anchors: str | None, *, signing: bool = False):
    import c2pa

    cfg: dict = {"verify": {"verify_trust": bool(trust_anchors), "ocsp_fetch": False, "remote_manifest_fetch": False}}
    if trust_anchors:
        cfg["trust"] = {"trust_anchors": trust_anchors}
    if signing:
        # no embedded JPEG thumbnail: it would make a 1 kB digit a 70 kB file
        cfg["builder"] = {"thumbnail": {"enabled": False}}
    return c2pa.Context(settings=c2pa.Settings.from_dict(cfg))


def sign_png(png: bytes, signer: ManifestSigner, *, title: str = "image.png", assertion: dict | None = None,
             source_type: str = TRAINED_ALGORITHMIC_MEDIA) -> bytes:
    """PNG bytes -> PNG bytes with the IPTC XMP source type and a signed C2PA manifest that says
    "created by a trained algorithm" (or, with source_type=COMPOSITE_TRAINED, "edited by one": the
    applications' inpainted, restored and colorized outputs), plus our assertion (account, payload, key label)."""
    import c2pa

    if source_type not in (TRAINED_ALGORITHMIC_MEDIA, COMPOSITE_TRAINED):
        raise ValueError(f"unsupported digital source type {source_type!r}")
    intent_type = (c2pa.C2paDigitalSourceType.TRAINED_ALGORITHMIC_MEDIA if source_type == TRAINED_ALGORITHMIC_MEDIA
                   else c2pa.C2paDigitalSourceType.COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA)

    manifest = {"claim_generator_info": [{"name": "ddpm-guard", "version": _version()}], "title": title,
                "format": "image/png",
                "assertions": [{"label": ASSERTION_LABEL, "data": assertion or {}}]}
    src = add_xmp_png(png, source_type)
    try:
        info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, signer.chain_pem, signer.key_pem, None)
        with c2pa.Signer.from_info(info) as s, c2pa.Builder(manifest, _c2pa_context(None, signing=True)) as b:
            b.set_intent(c2pa.C2paBuilderIntent.CREATE, intent_type)
            out = io.BytesIO()
            b.sign(s, "image/png", io.BytesIO(src), out)
    except c2pa.C2paError as e:
        # the native message names the failing step, never the key material
        raise GuardError(f"C2PA signing failed: {str(e).splitlines()[0][:200]}") from None
    return out.getvalue()


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("ddpm-guard")
    except Exception:  # noqa: BLE001 - running from a source tree without an install
        return "0"


def iptc_source_type(data: bytes) -> str | None:
    """The IPTC DigitalSourceType from an XMP packet anywhere in the file (PNG iTXt, JPEG APP1, ...), as
    its short name ("trainedAlgorithmicMedia"), or None."""
    m = _XMP_RE.search(data)
    if not m:
        return None
    d = _DST_RE.search(m.group(0))
    return d.group(1).decode("utf-8", "replace").rsplit("/", 1)[-1] if d else None


def _short_source_type(manifest: dict) -> str | None:
    for a in manifest.get("assertions", []):
        if str(a.get("label", "")).startswith("c2pa.actions"):
            for act in a.get("data", {}).get("actions", []):
                if act.get("digitalSourceType"):
                    return str(act["digitalSourceType"]).rsplit("/", 1)[-1]
    return None


_C2PA_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif", "TIFF": "image/tiff"}


def read_metadata(data: bytes, trust_anchors: str | None = None) -> dict:
    """The provenance metadata of one file's bytes. Never raises for a bad manifest: it reads Invalid."""
    meta = {"c2pa": {"present": False, "status": None, "digital_source_type": None, "signer": None,
                     "assertion": None},
            "iptc_digital_source_type": iptc_source_type(data)}
    mime = _C2PA_MIME.get(sniff_format(data))  # formats c2pa reads manifests from (not BMP)
    if mime is None or b"c2pa" not in data:  # every embedded manifest store carries the JUMBF label "c2pa"
        return meta
    import c2pa

    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), None, _c2pa_context(trust_anchors))
        if reader is None:
            return meta
        with reader:
            state = reader.get_validation_state()
            manifest = reader.get_active_manifest() or {}
    except (c2pa.C2paError, ValueError, KeyError) as e:
        meta["c2pa"].update(present=True, status="Invalid", error=str(e).splitlines()[0][:200] if str(e) else "unreadable manifest")
        return meta
    sig = manifest.get("signature_info") or {}
    ours = next((a.get("data") for a in manifest.get("assertions", []) if a.get("label") == ASSERTION_LABEL), None)
    meta["c2pa"].update(present=True, status=state if state in ("Trusted", "Valid", "Invalid") else "Invalid",
                        digital_source_type=_short_source_type(manifest),
                        signer=sig.get("issuer") or sig.get("common_name"), assertion=ours)
    return meta


def load_trust_anchors(paths: list[str | os.PathLike]) -> str | None:
    """Concatenate PEM trust anchors from files; None when there are none."""
    pems = []
    for p in map(Path, paths):
        if not p.is_file():
            raise GuardError(f"{p}: no such trust-anchor file")
        text = p.read_text(errors="replace")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise GuardError(f"{p}: not a PEM certificate file")
        pems.append(text.strip() + "\n")
    return "".join(pems) or None


def is_ai_source(source_type: str | None) -> bool:
    return source_type is not None and source_type in AI_SOURCE_TYPES


def describe(meta: dict) -> str:
    """One line for humans: what the metadata says."""
    c = meta["c2pa"]
    if not c["present"]:
        return "no C2PA manifest" + (f"; XMP says {meta['iptc_digital_source_type']}" if meta["iptc_digital_source_type"] else "")
    return f"C2PA {c['status']} ({c['digital_source_type'] or 'no source type'}, signer {c['signer'] or 'unknown'})"


__all__ = ["ManifestSigner", "new_signer", "load_signer", "sign_png", "read_metadata", "load_trust_anchors",
           "iptc_source_type", "add_xmp_png", "COMPOSITE_TRAINED", "is_ai_source", "describe"]
