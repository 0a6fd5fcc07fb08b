"""Text: the tokenizer, the incremental detokenizer, stop strings and chat templates."""

from .chat import ChatTemplate, ChatTemplateError, normalize_messages
from .detokenizer import IncrementalDetokenizer
from .stops import StopMatcher
from .tokenizer import Tokenizer

__all__ = ["ChatTemplate", "ChatTemplateError", "IncrementalDetokenizer", "StopMatcher", "Tokenizer",
           "normalize_messages"]
