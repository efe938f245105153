"""agentcg: per-tool-call cgroup v2 resource control for sandboxed AI agents."""

__version__ = "0.1.0"
