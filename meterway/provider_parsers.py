"""The `meterway provider add|remove` parsers: their flags and --help."""

from __future__ import annotations

import argparse


def add_config_parsers(prov: argparse._SubParsersAction) -> None:
    add = prov.add_parser(
        "add",
        help="register another upstream (served on every proxy within 5 s)",
        description="Register a provider NAME of a KIND at a base URL. Clients then call\n"
        "/v1/NAME/... on the proxy with their Meterway key, and the proxy calls the base\n"
        "URL with a provider key of NAME (meterway provider-key add NAME -). Models of NAME\n"
        'are the catalog\'s entries with "provider": "NAME". UPSTREAM_<NAME>_BASE_URL\n'
        "(upper case, '-' as '_') overrides the base URL.",
        epilog="examples:\n"
        "  meterway provider add groq --kind openai --base-url https://api.groq.com/openai/v1\n"
        "  meterway provider add azure --kind openai \\\n"
        "      --base-url https://RESOURCE.openai.azure.com/openai/v1 --auth-header api-key\n"
        "  meterway provider add vllm --kind openai --base-url http://10.0.0.5:8000/v1\n"
        "  meterway provider add openrouter --kind openai \\\n"
        "      --base-url https://openrouter.ai/api/v1 --header 'X-Title: Meterway'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add.add_argument(
        "name",
        help="2-32 of a-z, 0-9 and '-', starting with a letter (not 'account'): the path"
        ' segment /v1/NAME/ and the catalog\'s "provider"',
    )
    add.add_argument(
        "--kind",
        required=True,
        choices=("openai", "anthropic", "gemini"),
        help="the API it speaks: openai (chat/completions, responses, embeddings,"
        " completions), anthropic (messages, count_tokens) or gemini (generateContent,"
        " streamGenerateContent, countTokens)",
    )
    add.add_argument(
        "--base-url",
        required=True,
        metavar="URL",
        help="where /v1/NAME/{endpoint} goes: URL/{endpoint}. Kinds openai and anthropic:"
        " the URL ends in /v1 (as https://api.openai.com/v1 does); gemini: without a"
        " version (https://generativelanguage.googleapis.com)",
    )
    add.add_argument(
        "--auth-header",
        metavar="HEADER",
        help="the header that carries the provider key upstream. Default: the kind's"
        " (Authorization: Bearer for openai, x-api-key for anthropic, x-goog-api-key for"
        " gemini). Authorization sends 'Bearer <secret>'; any other name sends the bare"
        " secret (e.g. api-key for Azure OpenAI)",
    )
    add.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'Name: value'",
        help="a fixed header sent with every upstream request (repeatable); it replaces"
        " a client header of that name. Not the auth header, not a hop-by-hop header",
    )
    remove = prov.add_parser(
        "remove",
        help="stop serving an added provider (its paths answer 404 within 5 s)",
        description="Unregister an added provider. Its keys, thresholds and usage records"
        " stay; built-in providers cannot be removed. `provider add` brings it back.",
    )
    remove.add_argument("name")
