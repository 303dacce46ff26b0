# Evaluates ../module.nix against the stand-in (stand-in.nix) for a few configurations and
# returns what the module made of them; tests/package/test_nix.py checks the answers.
let
  standIn = import ./stand-in.nix;
  eval = standIn.evalModule ../module.nix;
  service = config: config.systemd.services.nordwgd.serviceConfig;

  off = eval { };
  plain = eval { services.nordwgd.enable = true; };
  full = eval {
    services.nordwgd = {
      enable = true;
      tokenFile = "/run/secrets/nordvpn-token";
      lockdown = true;
      settings = {
        location.country = [ "Germany" ];
        network.allow_lan = true;
        network.lockdown = false; # the lockdown option wins
        health.interval = 30;
      };
      namespace = {
        enable = true;
        name = "vpn";
        services = [ "transmission" ];
      };
    };
  };
in
{
  disabled_sets_nothing = builtins.attrNames off == [ "services" ];
  plain = {
    toml = plain.environment.etc."nordwgd/nordwgd.toml".source.text;
    service_config = service plain;
    wanted_by = plain.systemd.services.nordwgd.wantedBy;
    killswitch_wanted_by = plain.systemd.services.nordwgd-killswitch.wantedBy;
    timers = builtins.attrNames plain.systemd.timers;
    dbus = map (p: p.name) plain.services.dbus.packages;
    polkit = plain.security.polkit.enable;
  };
  full = {
    toml = full.environment.etc."nordwgd/nordwgd.toml".source.text;
    credential = (service full).LoadCredential;
    protect_system = (service full).ProtectSystem;
    capabilities = (service full).CapabilityBoundingSet;
    in_tunnel = full.systemd.services.transmission;
    restart_triggers = map (f: f.name) full.systemd.services.nordwgd.restartTriggers;
    assertions = map (a: a.assertion) full.assertions;
  };
}
