"""Where the detector's images come from: real folders and fake *families*, named on the command line.

    --real mnist5k | folder:PATH         real images (default: the mnist5k digits, split as in data.py)
    --fake-generator RUN_DIR | bundled   a generator the project can run: a DDPM run folder (any
                                         `ddpm-guard train` output) or a detector.families VAE/GAN
    --fake folder:PATH                   fakes someone else made (a folder of images)

Each --fake-generator and each --fake is one *family*: the unit of leave-one-family-out validation.
A DDPM family contributes several sampler settings (and SDEdit reconstructions of real images, the
"aligned" fakes), so no sampler is a shortcut. Every image is fitted to the detector's input and stored
8-bit, whatever its source, so file format and size never tell the classes apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddpm_guard.generator.errors import GuardError
from ddpm_guard.generator.image_io import fit_to, list_images, load_image, quantize
from ddpm_guard.detector.data import TRAIN_SOURCES, FakeSource, cached_fakes, real_split

BUNDLED = "bundled"
FOLDER_PREFIX = "folder:"
SAMPLED_FACTOR = 4  # a VAE/GAN family is one source; it gets this many times a DDPM source's fakes
SPLIT_FRAC = 0.8  # of each real folder and each fake source: the first 80 % train, the rest calibrate


@dataclass(frozen=True)
class Family:
    """One generator family: kind "ddpm" (path None = the bundled model), "vae", "gan" or "folder"."""
    name: str
    kind: str
    path: str | None = None
    shape: tuple[int, int, int] | None = None  # (C, H, W) the generator makes; None: the bundled model or a folder

    @property
    def cache_tag(self) -> str:
        """'' for the bundled model (its cache names predate families); else name + a hash of the path."""
        if self.path is None:
            return ""
        return f"{self.name}-{hashlib.sha256(str(Path(self.path).resolve()).encode()).hexdigest()[:8]}-"


def parse_generator(spec: str) -> Family:
    """`bundled` or a run folder; the kind is read from its config.json."""
    if spec == BUNDLED:
        return Family("ddpm-bundled", "ddpm")
    folder = Path(spec)
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise GuardError(f"{spec}: not a generator folder (no config.json); give a `ddpm-guard train` run or a "
                         "detector.families folder") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise GuardError(f"{spec}/config.json: unreadable ({e})") from None
    fmt = str(cfg.get("format", "")) if isinstance(cfg, dict) else ""
    if fmt.startswith("ddpm-guard/unet"):
        kind = "ddpm"
    elif fmt.startswith("ddpm-guard/family") and isinstance(cfg.get("family"), dict):
        kind = str(cfg["family"].get("kind"))
    else:
        raise GuardError(f"{spec}: config.json has format {fmt!r}, not a generator this detector can sample")
    try:
        if kind == "ddpm":
            unet = cfg.get("unet") or {}
            channels, size = int(unet.get("in_channels", 1)), int(unet.get("image_size", 28))
        else:
            channels, size = 1, int(cfg["family"].get("image_size", 28))
    except (AttributeError, TypeError, ValueError) as e:
        raise GuardError(f"{spec}/config.json: invalid image shape ({e})") from None
    shape = (channels, size, size)
    return Family(folder.resolve().name, kind, str(folder), shape)


def check_shape(family: Family, shape: tuple[int, int, int]) -> None:
    """A generator whose images are not the detector's input (a 3x32x32 photo model for a 1x28x28 digit
    detector) is refused before any sampling: its fakes would teach the detector image size, not traces."""
    if family.shape is not None and tuple(family.shape) != tuple(shape):
        made, reads = "x".join(map(str, family.shape)), "x".join(map(str, shape))
        raise GuardError(f"{family.path}: this generator makes {made} images; the detector reads {reads}. "
                         "Give a generator of the detector's own images (or train the detector for that size)")


def parse_folder(spec: str, what: str = "--fake") -> Path:
    if not spec.startswith(FOLDER_PREFIX):
        raise GuardError(f"{what} {spec!r}: write folder:PATH")
    folder = Path(spec[len(FOLDER_PREFIX):])
    list_images(folder)  # a missing folder or a file fails here, before any work
    return folder


def folder_family(spec: str) -> Family:
    folder = parse_folder(spec)
    return Family(folder.resolve().name, "folder", str(folder))


def read_folder(folder: str | Path, shape: tuple[int, int, int] = (1, 28, 28)) -> torch.Tensor:
    """Every image under `folder`, through the safe decoder, fitted to `shape` and 8-bit quantised.
    Unreadable files are skipped with their names in the error only if none is readable."""
    paths = list_images(folder)
    images, bad = [], []
    for p in paths:
        try:
            images.append(fit_to(load_image(p)[None], shape)[0])
        except GuardError as e:
            bad.append(str(e))
    if not images:
        why = f" ({len(bad)} unreadable, first: {bad[0]})" if bad else ""
        raise GuardError(f"{folder}: no readable images{why}")
    return quantize(torch.stack(images))


def split(x: torch.Tensor, part: str, seed: int = 0) -> torch.Tensor:
    """A fixed pseudo-random 80/20 split of a folder's images ('train' or 'calib')."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    k = int(round(SPLIT_FRAC * len(x))) if len(x) > 1 else len(x)
    return x[perm[:k]] if part == "train" else x[perm[k:]]


def real_images(specs: list[str], part: str, shape: tuple[int, int, int] = (1, 28, 28)) -> torch.Tensor:
    """The union of the real sources' `part` ('train' or 'calib')."""
    out = []
    for spec in specs or ["mnist5k"]:
        if spec == "mnist5k":
            out.append(fit_to(real_split(part), shape))
        else:
            out.append(split(read_folder(parse_folder(spec, "--real"), shape), part))
    return torch.cat(out)


def ddpm_sources(model) -> tuple[FakeSource, ...]:
    """The sampler settings a DDPM family contributes. The bundled model keeps its historical six; a distilled
    student (generator.distill) gets its own few-step DDIM grid at three guidance scales inside the range it
    learned, and SDEdit reconstructions on that grid; another DDPM gets ancestral, two DDIM settings and
    SDEdit reconstructions (guided when it is conditional). The bundled model and other DDPMs
    add SDEdit from t 20-150: fakes that keep a real digit's strokes almost exactly and differ from it only
    in the generator's traces (B-Free, Guillaro et al. 2025), so content cannot be the evidence."""
    low_t = FakeSource("aligned-t20-150", steps=5, guidance=0.0, aligned=(20, 150))
    if getattr(model, "is_bundled", False):
        return TRAIN_SOURCES + (low_t,)
    distilled = getattr(model, "distilled", None)
    if distilled is not None:  # a distilled student: its own few-step grid, at guidance scales it learned
        n, (g_lo, g_hi) = distilled.steps, distilled.guidance_range
        gs = sorted({min(max(g, g_lo), g_hi) for g in (1.0, 1.5, 2.5)})
        return tuple(FakeSource(f"ddim{n}-g{g:g}", steps=n, guidance=g) for g in gs) + (
            FakeSource(f"aligned-t100-600-ddim{n}", steps=n, guidance=gs[0], aligned=(100, 600)),)
    g = 1.5 if model.config.num_classes else 0.0
    return (FakeSource("ddpm50", "ddpm", 50, guidance=g), FakeSource("ddim10", steps=10, guidance=g),
            FakeSource("ddim50", steps=50, guidance=g), FakeSource("aligned-t100-600", steps=10, guidance=0.0,
                                                                   aligned=(100, 600)), low_t)


def family_fakes(family: Family, n_per_source: int, seed: int, real: torch.Tensor, cache: Path | None,
                 log=None) -> dict[str, torch.Tensor]:
    """{source name: fakes in [-1, 1], 8-bit} for one family; source i uses seed + i (cached as uint8)."""
    if family.kind == "folder":
        x = read_folder(family.path)
        return {"folder": x}
    if family.kind in ("vae", "gan"):
        from ddpm_guard.detector.families import load_family, sample_family

        n = SAMPLED_FACTOR * n_per_source  # one source: as many fakes as a DDPM family's sources together
        path = Path(cache) / f"{family.cache_tag}sample-n{n}-seed{seed}.npy" if cache else None
        if path is not None and path.exists():
            return {"sample": torch.from_numpy(np.load(path)).float() / 127.5 - 1.0}
        x = sample_family(load_family(family.path, device="cpu"), n, seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.save(path, ((x + 1) * 127.5).round().to(torch.uint8).numpy())
        return {"sample": x}
    from ddpm_guard.generator.checkpoint import load_model

    model, schedule, _ = load_model(family.path)
    model.is_bundled = family.path is None
    sources = ddpm_sources(model)
    tagged = [FakeSource(**{**src.__dict__, "name": family.cache_tag + src.name}) for src in sources]
    out = {}
    for i, (src, tag) in enumerate(zip(sources, tagged)):
        out[src.name] = cached_fakes(model, schedule, tag, n_per_source, seed + i, cache, real, log)
    return out


def split_sources(fakes: dict[str, torch.Tensor], part: str) -> torch.Tensor:
    """Per source, the first 80 % ('train') or the rest ('calib'), concatenated."""
    k = {name: int(round(len(x) * SPLIT_FRAC)) for name, x in fakes.items()}
    return torch.cat([x[:k[n]] if part == "train" else x[k[n]:] for n, x in fakes.items()])


def families(generators: list[str] | None, folders: list[str] | None, *, default_bundled: bool) -> list[Family]:
    """`--fake-generator RUN_DIR|bundled` and `--fake folder:PATH` -> Families, checked up front (the bundled
    generator when neither is given and `default_bundled`); two families of one name are refused."""
    gens = generators or ([BUNDLED] if default_bundled and not folders else [])
    fams = [parse_generator(g) for g in gens] + [folder_family(f) for f in folders or []]
    names = [f.name for f in fams]
    if len(set(names)) != len(names):
        raise GuardError(f"two fake families share a name ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))}); "
                         "rename one folder")
    return fams


def training_sources(generators: list[str] | None, folders: list[str] | None, reals: list[str] | None,
                     out: str | Path) -> list[Family]:
    """The fake families and real folders of a detector's training or calibration, checked, and the output folder
    made: a mistake fails before the minutes of fake-making and training, not after."""
    fams = families(generators, folders, default_bundled=True)
    for r in reals or []:
        if r != "mnist5k":
            parse_folder(r, "--real")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GuardError(f"{out}: cannot create the output folder ({e.strerror})") from None
    return fams


def trained_families(meta: dict) -> list[Family]:
    """The generator families a detector was trained on (its meta), where their folders still exist (folders of
    fakes made elsewhere are not re-read: their images were all used in training)."""
    out = []
    for f in (meta.get("train") or {}).get("families", {}).values():
        if f.get("kind") != "folder" and (f.get("path") is None or Path(f["path"]).is_dir()):
            out.append(parse_generator(f.get("path") or BUNDLED))
    return out
