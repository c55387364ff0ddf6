"""Local stand-ins for provider APIs, speaking each provider's wire format (quirks included).

Each emulator records every request it received (``.requests``) and can be scripted to fail
(``.fail_next(...)``), so tests assert on both what the caller got and what upstream saw.
"""
