"""Client SDK: speaks the protocol; imports only agentcg.core."""

from agentcg.client.sdk import Client, ToolCall

__all__ = ["Client", "ToolCall"]
