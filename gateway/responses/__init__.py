"""The OpenAI Responses API (``/v1/responses``) over the chat pipeline: ``convert`` translates
requests, answers and streams (no I/O); ``service`` runs them through the Engine and keeps the
conversation state (``gateway.ledger.responses``)."""
