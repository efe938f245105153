"""`agentcg doctor`: what this host offers agentcg, how each fact was found, what it gates.

One module per check domain (cgroups, bpf, sched_ext, docker); each turns the facts of
one `Host` into checks and feature flags, and `report` runs them all in order. To add a
fact: a check in its domain's ``collect``, and its feature in ``report.FEATURES``.

Read-only except for one probe: when cgroup2 has the memory controller, a uniquely
named empty cgroup is created and removed next to the configured root to prove that we
may create the daemon's subtree. Nothing is ever written on a cgroup v1 or hybrid
host's hierarchies; those are only described.
"""
