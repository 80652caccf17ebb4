"""Foundations every concern uses: the error hierarchy, fault points for crash tests, file helpers."""
