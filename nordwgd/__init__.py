"""nordwgd: a NordVPN NordLynx (WireGuard) daemon with a kill-switch firewall and a D-Bus API."""

__version__ = "0.1.0"
