"""A local emulator of the WhatsApp Cloud API and its webhooks. It imports nothing from the engine.

Run it: ``python -m campaign.sandbox --port 8555`` (or ``campaign sandbox``), then point
``WA_API_BASE_URL`` at ``http://127.0.0.1:8555``. In tests::

    from campaign.sandbox.config import SandboxConfig
    from campaign.sandbox.server import SandboxServer

    with SandboxServer(SandboxConfig(latency_ms=(0, 0), webhook_url=url)) as sandbox:
        ...  # send to sandbox.url, then assert on sandbox.figures()

Modules: ``config`` (settings), ``templates`` (the template registry), ``meta_errors`` (Meta's
codes and bodies), ``recipients`` (wa_id and scripted recipients), ``rules`` (validation, limits,
windows), ``ledger`` (what arrived, and figures), ``webhooks`` (status and inbound webhooks),
``emulator`` (the live ``Sandbox``), ``app`` (HTTP), ``server`` (running it).
Graph paths: ``POST /{version}/{phone-number-id}/messages``, ``.../contacts``, ``.../media``
(uploads) and ``GET /{version}/{waba-id}/message_templates``.
Controls live under ``/_sandbox/``: ``health``, ``config`` (GET, PATCH), ``reset``, ``ledger``,
``figures``, ``inbound``, ``window``, ``marketing-preferences``, ``webhooks``.
"""
