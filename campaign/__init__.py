"""Bulk WhatsApp campaign engine for the WhatsApp Cloud API."""
