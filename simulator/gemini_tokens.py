"""Gemini request reading and deterministic `usageMetadata`.

Prompt tokens = 4 + ceil(characters of every `text` part of `systemInstruction` and
`contents` / 4) (as `simulator.tokens` counts the other providers' text), unless
`x-sim-input-tokens` says otherwise. Each candidate gets the same generation, one
"tokN " delta per output token; `thoughtsTokenCount` (x-sim-thoughts-tokens) is spent
first and counts against `maxOutputTokens`, as Gemini 2.5's thinking does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.control import Directives
from simulator.errors import SimError
from simulator.tokens import Generation, count_from_chars, make_generation

MAX_CANDIDATES = 8


def _parts_chars(content: Any) -> int:
    if not isinstance(content, dict):
        return 0
    parts = content.get("parts")
    if not isinstance(parts, list):
        return 0
    return sum(
        len(part["text"])
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def gemini_input_tokens(body: dict[str, Any]) -> int:
    """`systemInstruction` plus `contents` of a GenerateContentRequest (or of the
    `generateContentRequest` a countTokens body may wrap)."""
    inner = body.get("generateContentRequest")
    if isinstance(inner, dict):
        body = inner
    chars = _parts_chars(body.get("systemInstruction"))
    contents = body.get("contents")
    if isinstance(contents, list):
        chars += sum(_parts_chars(item) for item in contents)
    return count_from_chars(chars)


def require_contents(body: dict[str, Any]) -> None:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise SimError(400, "* GenerateContentRequest.contents: contents is not specified\n")


def _positive_int(config: dict[str, Any], field: str) -> int | None:
    value = config.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SimError(400, f"* GenerationConfig.{field}: must be a positive integer\n")
    return value


@dataclass(frozen=True, slots=True)
class GeminiAnswer:
    """What the simulated model produces for one generateContent request."""

    gen: Generation
    candidates: int
    thoughts: int
    cached: int
    tool_use: int

    @property
    def truncated(self) -> bool:
        return self.gen.truncated

    @property
    def finish_reason(self) -> str:
        return "MAX_TOKENS" if self.gen.truncated else "STOP"

    def usage(self, deltas_sent: int | None = None) -> dict[str, Any]:
        """`usageMetadata` after `deltas_sent` deltas of each candidate (all by default).
        Zero counts are left out, as Google leaves them out."""
        sent = self.gen.output_tokens if deltas_sent is None else deltas_sent
        prompt = self.gen.input_tokens
        output = sent * self.candidates
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        if output:
            usage["candidatesTokenCount"] = output
        usage["totalTokenCount"] = prompt + self.tool_use + output + self.thoughts
        if self.cached:
            usage["cachedContentTokenCount"] = self.cached
        if self.tool_use:
            usage["toolUsePromptTokenCount"] = self.tool_use
        if self.thoughts:
            usage["thoughtsTokenCount"] = self.thoughts
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if self.cached:
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": self.cached}]
        if self.tool_use:
            usage["toolUsePromptTokensDetails"] = [
                {"modality": "TEXT", "tokenCount": self.tool_use}
            ]
        return usage


def make_answer(body: dict[str, Any], directives: Directives) -> GeminiAnswer:
    config = body.get("generationConfig") or {}
    if not isinstance(config, dict):
        raise SimError(400, "Invalid value at 'generation_config': expected an object.")
    cap = _positive_int(config, "maxOutputTokens")
    candidates = _positive_int(config, "candidateCount") or 1
    if candidates > MAX_CANDIDATES:
        raise SimError(400, f"Only 1 to {MAX_CANDIDATES} candidates are supported.")
    thoughts = directives.thoughts_tokens
    thinking = config.get("thinkingConfig")
    if isinstance(thinking, dict):
        budget = thinking.get("thinkingBudget")
        if isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
            thoughts = min(thoughts, budget)  # -1 (dynamic) leaves the knob's value
    if cap is not None:
        thoughts = min(thoughts, cap)
    prompt = directives.input_tokens
    if prompt is None:
        prompt = gemini_input_tokens(body)
    text_cap = None if cap is None else cap - thoughts
    gen = make_generation(directives.chunks, text_cap, prompt)
    return GeminiAnswer(
        gen=gen,
        candidates=candidates,
        thoughts=thoughts,
        cached=min(directives.cached_tokens, prompt),
        tool_use=directives.tool_use_tokens,
    )
