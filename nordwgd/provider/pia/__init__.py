"""Private Internet Access (PIA): WireGuard with an ephemeral key per connect, port forwarding.

https.py        one HTTPS request to a pinned address, TLS checked for a given name
regions.py      the signed region list: verify, parse, choose a region and a server
api.py          the PIA services: token, region list, addKey, getSignature, bindPort
login.py        the stored username and password, and the kept token
portforward.py  the forwarded port: signature, bindPort every 15 minutes, hook, file
provider.py     PIA behind the provider interface the state machine uses
"""
