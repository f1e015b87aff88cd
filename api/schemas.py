"""The service's typed request and response models (the OpenAPI schema at /docs is built from these)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ddpm_guard.api.scan import VERDICTS

Verdict = Literal[VERDICTS]  # the scan's own list: one place says which verdicts exist


class WatermarkEvidence(BaseModel):
    checked: bool = Field(description="false when the scan had no key ring to test")
    detected: bool
    p_value: float | None = Field(None, description="Sidak-corrected over every key and nonce of the ring")
    payload: str | None = Field(None, description="hex payload, when its keyed tag confirms it")
    account: str | None = Field(None, description="the account whose id the payload carries")
    key_label: str | None = None


class C2paEvidence(BaseModel):
    present: bool
    status: Literal["Trusted", "Valid", "Invalid"] | None = None
    digital_source_type: str | None = None
    signer: str | None = None


class MetadataEvidence(BaseModel):
    c2pa: C2paEvidence
    iptc_digital_source_type: str | None = None


class ImageInfo(BaseModel):
    format: str | None
    width: int
    height: int


class ScanRow(BaseModel):
    path: str = Field(description="the uploaded file name")
    verdict: Verdict
    explanation: str = Field(description="one plain sentence naming the evidence that decided")
    p_synthetic: float | None = None
    synthetic: bool | None = None
    threshold: float | None = Field(None, description="the calibrated threshold this file was judged at: the one "
                                    "for the benign edit (JPEG, blur, resize, noise, none) it is guessed to have gone through")
    edit: str | None = Field(None, description="that guessed edit: clean, jpeg, blur, resize or noise (an edited file "
                             "is judged by the edit expert); null for a detector without an edit router")
    in_domain: bool | None = None
    domain_reason: str | None = None
    account: str | None = Field(None, description="who made it, from the watermark payload or a Trusted manifest")
    watermark: WatermarkEvidence | None = None
    metadata: MetadataEvidence | None = None
    image: ImageInfo | None = None
    sha256: str | None = None
    error: str | None = None


class ScanResponse(BaseModel):
    results: list[ScanRow]


class GenerateRequest(BaseModel):
    model_config = {"extra": "forbid"}
    n: int = Field(1, ge=1, le=1024, description="images to make (the service caps it, default 64)")
    label: int | None = Field(None, ge=0, le=1_000_000, description="class to draw; default spreads over all")
    steps: int | None = Field(None, ge=1, le=1000, description="DDIM steps (default 50)")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="same seed, same images; default random")
    guidance: float | None = Field(None, ge=0.0, le=20.0, description="classifier-free guidance scale")
    prompt: str | None = Field(None, max_length=500, description='text, e.g. "a handwritten seven"; off-topic '
                               "prompts are refused with 400; not with label")
    fast: bool = Field(False, description="the distilled few-step student (BENCHMARKS.md: FID within +5 of the "
                       "default, several times faster); not with steps")
    guided_mark: bool = Field(False, description="also the guided mark (CLI: sample --guided-mark), which survives "
                              "rotation, crops, JPEG and blur where the default x_T mark does not; it costs visible "
                              "quality (BENCHMARKS.md, Watermark v2)")


class GeneratedImage(BaseModel):
    filename: str
    png_base64: str
    label: int | None
    payload: str = Field(description="the watermark's payload: the calling account's id, hex")


class GenerateResponse(BaseModel):
    account: str
    seed: int
    guided_mark: bool = Field(description="whether the images carry the guided mark beside the x_T mark")
    images: list[GeneratedImage]


class AppImage(BaseModel):
    application: Literal["refine", "inpaint", "colorize"]
    filename: str
    png_base64: str
    payload: str = Field(description="the watermark's payload: the calling account's id, hex")
    seed: int
    width: int
    height: int


class Health(BaseModel):
    status: str


class AuditJob(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed"]
    input: str = Field(description="the uploaded archive's name")
    done: int = Field(description="files handled so far")
    total: int = Field(description="files in the archive (0 until the audit has listed them)")
    error: str | None = None
    reports: dict[str, str] = Field(default_factory=dict, description="report.html/json/csv links, once done")
