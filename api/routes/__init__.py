"""Thin routes: each parses, calls one library function and shapes the response."""
