"""The kill-switch firewall: policy value -> rendered ruleset -> one transaction -> verify."""

from nordwgd.firewall.apply import Firewall
from nordwgd.firewall.policy import FirewallPolicy, policy_for_state
from nordwgd.firewall.render import render

__all__ = ["Firewall", "FirewallPolicy", "policy_for_state", "render"]
