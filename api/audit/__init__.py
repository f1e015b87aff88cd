"""Audit a dataset for deepfakes: every file gets the scan's verdict plus hashes, size and a
near-duplicate group; rows go to a journal as they are scored (resumable after a crash) and end
in report.json, report.csv and a self-contained report.html.

  sources.py  folders, .zip and .tar(.gz) read safely, one (path, bytes | error) at a time
  engine.py   THE scoring function both engines call: a batch of items -> flat rows
  journal.py  append-only JSON lines with an fsync per batch; resume = skip (path, sha256) already there
  local.py    the local engine (one process, batches)
  ray_engine.py  the same scoring on Ray Data (read_binary_files + map_batches on an actor pool)
  report.py   summary, duplicate groups, JSON/CSV/HTML
"""

from ddpm_guard.api.audit.local import run_audit

__all__ = ["run_audit"]
