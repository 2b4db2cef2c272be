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
``health`` (the sender's health and its events), ``emulator`` (the live ``Sandbox``), ``app`` (HTTP),
``server`` (running it).
Graph paths: ``POST /{version}/{phone-number-id}/messages``, ``.../contacts``, ``.../media``
(uploads), ``GET /{version}/{waba-id}/message_templates`` and ``GET /{version}/{phone-number-id}``
(the sender's health, from the ``health`` config).
Controls live under ``/_sandbox/``: ``health``, ``config`` (GET, PATCH), ``reset``, ``ledger``,
``figures``, ``inbound``, ``window``, ``marketing-preferences``, ``template-status``, ``quality``,
``capability`` (the last three post Meta's account-level webhooks), ``webhooks``.
Every user has a business-scoped user id (``recipients.user_id_of``, reversible by ``wa_id_of_user``):
webhooks carry it as Meta's do since 2026, ``/messages`` accepts it in ``recipient``, and users with a
username (``username_numbers``, ``username_fraction``) are named by it alone.
"""
