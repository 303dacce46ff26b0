"""Split tunnelling: excluded apps (a systemd slice whose sockets leave by the uplink) and
local bridges of containers and virtual machines (forwarded through the tunnel only).

``cgroups`` finds the slice in the cgroup v2 hierarchy, ``rules`` renders and loads the table
that marks excluded traffic, ``bridges`` says which bridges are local, ``excluded`` keeps the
rules in step with the slice, and ``systemd`` asks systemd to move processes into the slice.
"""
