"""Offline inference runtime for the Kaggle RSNA Intracranial Aneurysm Detection competition (no torch, no timm)."""
