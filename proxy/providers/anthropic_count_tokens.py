"""Anthropic token counting: `POST /messages/count_tokens`, forwarded free.

Never billed and never held (contract section 5): `billed = False` routes it
through `proxy.free_endpoints`, which checks the key, the model and the key's
requests per minute, and relays the body as given.
"""

from __future__ import annotations

from proxy.providers.free_forward import FreeForward


class AnthropicCountTokens(FreeForward):
    kind = "anthropic"
    endpoint = "messages/count_tokens"
