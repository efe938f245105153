"""BPF program loaders (bcc probes). The C sources live in the top-level bpf/ directory,
installed as the data-only package agentcg.bpf.csrc (see agentcg.bpf.sources)."""
