"""A local emulator of the WhatsApp Cloud API and its webhooks. It imports nothing from the engine."""
