"""NordVPN: its API client, the location catalog, the planner and NordLynx's WireGuard settings.

api.py        ``NordVpnApi``: servers, recommendations and credentials over pinned addresses
parse.py      strict parsing of the API's answers
marked.py     the HTTP transport whose sockets carry the firewall mark
catalog.py    countries, cities and groups shipped in ``nordwgd/data``; names people type
planner.py    ``Planner``: the NordVPN provider (resolve options, plan attempts)
selection.py  pure ranking of candidate servers
wgconf.py     NordLynx tunnel parameters and their wg-quick export
export.py     ``nordwgd export-config``: a wg-quick file for one server
"""
