"""The OpenAI-shaped API: request fields mapped to the engine, responses built from its chunk streams."""

from .chat import create_chat_completion
from .completions import create_completion
from .tools import ToolCall, check_tools, parse_tool_calls

__all__ = ["ToolCall", "check_tools", "create_chat_completion", "create_completion", "parse_tool_calls"]
