"""Offline upstream simulator speaking the OpenAI and Anthropic HTTP wire formats."""

from simulator.app import build_app, run, start
from simulator.state import RECORDER_KEY, recorded_requests

__all__ = ["RECORDER_KEY", "build_app", "recorded_requests", "run", "start"]
