"""Signed provenance metadata: C2PA manifests and the IPTC XMP DigitalSourceType, written on generated
files and read (and validated against trust anchors) on scan. Imports `generator` only."""
