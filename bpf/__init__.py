"""The BPF C sources, installed as the data-only package agentcg.bpf.csrc.

pyproject.toml maps this directory to that package so the sources ship in wheels and
editable installs alike; agentcg.bpf.sources loads them with importlib.resources.
"""
