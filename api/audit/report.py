"""The audit's report: summary, near-duplicate groups, report.json, report.csv and report.html.

report.html is one self-contained file (no network): counts per verdict, a histogram of
p_synthetic with the detector's threshold, thumbnails of the most likely synthetic files, the
duplicate groups and the unreadable files with their reasons. Everything user-supplied (file names,
reasons) is HTML-escaped.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from ddpm_guard.generator.fsutil import atomic_write, atomic_write_bytes
from ddpm_guard.api.audit.engine import COLUMNS

# pHash bits that may differ for "near duplicate". Measured (bench/audit/phash_threshold.py, BENCHMARKS.md):
# every hash has 31 of 63 bits set, so distances are even; 0 bits catches 56-95 % of re-saved copies of MNIST
# digits and links 2e-6 of distinct pairs (73 groups, at most 8 files, in a 10,000-file set); 2 bits catches
# 95-100 % but links 3.6e-5 of distinct pairs, which chained 367 different digits into one group there.
DUPLICATE_BITS = 0


def duplicate_groups(rows: list[dict], max_bits: int = DUPLICATE_BITS) -> list[list[int]]:
    """Groups (row indices, 2+ each) of files whose pHashes differ in at most `max_bits` bits, linked
    transitively (union-find). Multi-index hashing: split the 64 bits into max_bits + 1 blocks; two
    hashes within max_bits bits agree exactly on at least one block (pigeonhole), so only hashes that
    share a block value are compared. Exact, and far below all-pairs work on real data."""
    idx = [i for i, r in enumerate(rows) if r.get("phash")]
    if len(idx) < 2:
        return []
    h = np.array([int(rows[i]["phash"], 16) for i in idx], dtype=np.uint64)
    parent = np.arange(len(idx))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    nblocks = max_bits + 1
    edges = np.linspace(0, 64, nblocks + 1).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        block = (h >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(block, kind="stable")
        starts = np.flatnonzero(np.r_[True, block[order][1:] != block[order][:-1]])
        for a, b in zip(starts, np.r_[starts[1:], len(order)]):
            members = order[a:b]
            if len(members) < 2:
                continue
            for k in range(0, len(members), 1024):  # bounded memory even for a huge bucket
                rows_k = members[k:k + 1024]
                dist = _popcount(h[rows_k, None] ^ h[None, members])
                for i, j in zip(*np.nonzero(dist <= max_bits)):
                    x, y = find(int(rows_k[i])), find(int(members[j]))
                    if x != y:
                        parent[max(x, y)] = min(x, y)
    groups: dict[int, list[int]] = {}
    for k in range(len(idx)):
        groups.setdefault(find(k), []).append(idx[k])
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (a byte lookup table: no 64x unpacked copy)."""
    return _POP8[x.view(np.uint8)].reshape(*x.shape, 8).sum(-1, dtype=np.int32)


def summarize(rows: list[dict], groups: list[list[int]], threshold: float | None, meta: dict,
              routed_thresholds: dict[str, float] | None = None) -> dict:
    """The report's summary. `threshold` is the detector's edit-blind one; with an edit router, each file was
    judged at the threshold of the edit it was guessed to have gone through (`routed_thresholds`, and each
    row's "threshold")."""
    counts = Counter(r["verdict"] for r in rows)
    scored = [r for r in rows if r["verdict"] != "unreadable"]
    flagged = sum(r["verdict"] in ("watermarked-ours", "signed-synthetic", "synthetic") for r in rows)
    return {**meta, "files": len(rows), "counts": dict(sorted(counts.items())),
            "synthetic_fraction": flagged / len(scored) if scored else None,
            "threshold": threshold, "routed_thresholds": routed_thresholds, "duplicate_groups": len(groups),
            "files_in_duplicate_groups": sum(len(g) for g in groups), "unreadable": counts.get("unreadable", 0)}


def write_reports(out: Path, rows: list[dict], summary: dict, groups: list[list[int]],
                  read: Callable[[str], bytes | None], top: int = 24) -> None:
    for g_id, g in enumerate(groups):
        for i in g:
            rows[i]["duplicate_group"] = g_id
    for r in rows:
        r.setdefault("duplicate_group", None)
    cols = list(COLUMNS) + ["duplicate_group"]
    atomic_write_bytes(out / "report.json", json.dumps({"summary": summary, "rows": [{c: r.get(c) for c in cols} for r in rows]},
                                                       indent=1).encode())

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    atomic_write(out / "report.csv", write_csv)
    atomic_write_bytes(out / "report.html", render_html(rows, summary, groups, read, top).encode())


def _histogram_png(rows: list[dict], threshold: float | None, routed: dict[str, float] | None = None) -> str:
    """p_synthetic of the scored files, with the threshold (or one line per route of the edit router)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = [r["p_synthetic"] for r in rows if r.get("p_synthetic") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    ax.hist(p, bins=50, range=(0, 1), color="#4a78b5")
    lines = ({f"threshold if {edit}": t for edit, t in routed.items()} if routed
             else {"threshold": threshold} if threshold is not None else {})
    for (label, t), style in zip(lines.items(), ("--", ":", "-.", (0, (5, 1)), (0, (1, 3)), (0, (3, 1, 1, 1)))):
        ax.axvline(t, color="#c0392b", linestyle=style, label=f"{label} {t:.2f}")
    if lines:
        ax.legend(fontsize="small")
    ax.set_xlabel("p_synthetic")
    ax.set_ylabel("files")
    ax.set_title("Classifier scores")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def render_html(rows: list[dict], summary: dict, groups: list[list[int]], read: Callable[[str], bytes | None],
                top: int = 24) -> str:
    from ddpm_guard.api.audit.engine import thumbnail_png

    e = html.escape
    order = {"watermarked-ours": 0, "signed-synthetic": 1, "synthetic": 2}
    flagged = sorted((r for r in rows if r["verdict"] in order),
                     key=lambda r: (order[r["verdict"]], -(r["p_synthetic"] or 0), r["path"]))[:top]
    thumbs = []
    for r in flagged:
        try:
            data = read(r["path"])
            src = base64.b64encode(thumbnail_png(data)).decode() if data else None
        except Exception:  # noqa: BLE001 - a file changed since scoring: show the row without a picture
            src = None
        img = f'<img alt="" src="data:image/png;base64,{src}">' if src else "<div class=noimg>?</div>"
        p = "-" if r["p_synthetic"] is None else f"{r['p_synthetic']:.3f}"
        thumbs.append(f'<figure>{img}<figcaption><b>{e(r["verdict"])}</b> p={p}<br>{e(r["path"])}</figcaption></figure>')
    counts = "".join(f"<tr><td>{e(k)}</td><td>{v}</td></tr>" for k, v in summary["counts"].items())
    dup = "".join(f"<tr><td>{g_id}</td><td>{len(g)}</td><td>{'<br>'.join(e(rows[i]['path']) for i in g[:20])}"
                  f"{'<br>…' if len(g) > 20 else ''}</td></tr>" for g_id, g in enumerate(groups[:200]))
    bad = "".join(f"<tr><td>{e(r['path'])}</td><td>{e(r.get('error') or '')}</td></tr>"
                  for r in rows if r["verdict"] == "unreadable")
    frac = summary.get("synthetic_fraction")
    routed, thr = summary.get("routed_thresholds"), summary.get("threshold")
    rule = ("Each file is judged at the threshold of the benign edit it seems to have gone through: "
            + ", ".join(f"{e(k)} {v:.2f}" for k, v in routed.items()) + "." if routed
            else f"Files above {thr:.2f} are called synthetic." if thr is not None else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ddpm-guard audit: {e(str(summary.get('input')))}</title>
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;margin:8px 0 20px}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}th{{background:#f3f3f3}}
figure{{display:inline-block;margin:6px;width:150px;font-size:11px;word-break:break-all}}
figure img{{width:96px;image-rendering:pixelated;border:1px solid #999}}.noimg{{width:96px;height:96px;background:#eee}}</style>
</head><body>
<h1>Audit of {e(str(summary.get('input')))}</h1>
<p>{summary['files']} files; {summary['unreadable']} unreadable; flagged as synthetic (watermark, trusted manifest or
classifier): <b>{'-' if frac is None else f'{100 * frac:.1f} %'}</b> of readable files. Engine: {e(str(summary.get('engine')))}.</p>
<h2>Verdicts</h2><table id="counts"><tr><th>verdict</th><th>files</th></tr>{counts}</table>
<h2>Classifier scores</h2><img id="histogram" alt="histogram of p_synthetic" src="data:image/png;base64,{_histogram_png(rows, summary.get('threshold'), summary.get('routed_thresholds'))}">
<p id="thresholds">{rule}</p>
<h2>Most likely synthetic (top {len(flagged)})</h2><div id="flagged">{''.join(thumbs) or '<p>none</p>'}</div>
<h2>Near-duplicate groups ({len(groups)})</h2><table id="duplicates"><tr><th>group</th><th>files</th><th>paths</th></tr>{dup}</table>
<h2>Unreadable files</h2><table id="unreadable"><tr><th>path</th><th>reason</th></tr>{bad}</table>
</body></html>
"""
