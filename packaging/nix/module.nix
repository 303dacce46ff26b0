# NixOS module: services.nordwgd. Import it beside nixpkgs' modules:
#   imports = [ ./packaging/nix/module.nix ];
#   services.nordwgd = { enable = true; tokenFile = "/run/secrets/nordvpn-token"; };
{
  config,
  lib,
  pkgs,
  ...
}:

let
  cfg = config.services.nordwgd;
  inherit (lib) mkOption mkEnableOption mkIf types;
  settingsFormat = pkgs.formats.toml { };

  # What the options below decide wins over the same keys in `settings`.
  settings = lib.recursiveUpdate cfg.settings {
    network =
      lib.optionalAttrs cfg.lockdown { lockdown = true; }
      // lib.optionalAttrs cfg.namespace.enable {
        mode = "namespace";
        namespace = cfg.namespace.name;
      };
  };
  configFile = settingsFormat.generate "nordwgd.toml" settings;

  # data/systemd/namespace-mode.conf: the daemon must make /run/netns/NAME in the system's
  # mount namespace, so nothing may give it a private one.
  namespaceMode = {
    CapabilityBoundingSet = [ "CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_ADMIN" ];
    RestrictNamespaces = "net mnt";
    SystemCallFilter = [ "@mount setns unshare" ];
    ProtectSystem = "no";
    ProtectHome = "no";
    PrivateTmp = "no";
    ProtectKernelModules = "no";
    ProtectKernelLogs = "no";
    ProtectControlGroups = "no";
    ProtectProc = "default";
    ProcSubset = "all";
    ProtectHostname = "no";
    ProtectClock = "no";
    PrivateIPC = "no";
    ReadWritePaths = [ "" ];
    ReadOnlyPaths = [ "" ];
    BindPaths = [ "" ];
    BindReadOnlyPaths = [ "" ];
  };

  # A service that runs inside the tunnel's namespace (its only way out is the tunnel).
  inTunnel = {
    after = [ "nordwgd.service" ];
    bindsTo = [ "nordwgd.service" ];
    serviceConfig.NetworkNamespacePath = "/run/netns/${cfg.namespace.name}";
  };
in
{
  options.services.nordwgd = {
    enable = mkEnableOption "nordwgd, the NordVPN NordLynx daemon with a kill switch";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      description = "The nordwgd package.";
    };

    settings = mkOption {
      type = settingsFormat.type;
      default = { };
      example = {
        location.country = [ "Germany" ];
        network.allow_lan = true;
      };
      description = "/etc/nordwgd/nordwgd.toml as Nix values; every key is in nordwgd.toml(5).";
    };

    tokenFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/run/secrets/nordvpn-token";
      description = ''
        A file holding the access token, handed to the daemon as the systemd credential
        "token" (LoadCredential=): it is read by systemd, never copied into the Nix store.
        Without it the daemon uses the login stored by `nordwgctl login`.
      '';
    };

    lockdown = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Block all traffic outside the tunnel, even while disconnected and from early boot
        (nordwgd-killswitch.service).
      '';
    };

    namespace = {
      enable = mkEnableOption "namespace mode: only a network namespace uses the tunnel";
      name = mkOption {
        type = types.str;
        default = "nordwgd";
        description = "The network namespace, /run/netns/NAME.";
      };
      services = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "transmission" ];
        description = ''
          systemd services (names without .service) that run inside the namespace: they start
          after nordwgd, stop with it, and reach nothing but the tunnel.
        '';
      };
    };
  };

  config = mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];
    environment.etc."nordwgd/nordwgd.toml".source = configFile;
    services.dbus.packages = [ cfg.package ];
    security.polkit.enable = true;
    systemd.packages = [ cfg.package ];

    systemd.services = {
      nordwgd = {
        wantedBy = [ "multi-user.target" ];
        restartTriggers = [ configFile ];
        serviceConfig = lib.mkMerge [
          (mkIf (cfg.tokenFile != null) {
            # The empty entry drops the unit's own optional "token:nordwgd.token".
            LoadCredential = [
              ""
              "token:${toString cfg.tokenFile}"
            ];
          })
          (mkIf cfg.namespace.enable namespaceMode)
        ];
      };
      nordwgd-killswitch.wantedBy = [ "sysinit.target" ];
    } // lib.genAttrs cfg.namespace.services (_: inTunnel);

    systemd.timers = {
      nordwgd-health.wantedBy = [ "timers.target" ];
      nordwgd-renew.wantedBy = [ "timers.target" ];
    };

    assertions = [
      {
        assertion = cfg.namespace.services == [ ] || cfg.namespace.enable;
        message = "services.nordwgd.namespace.services needs services.nordwgd.namespace.enable";
      }
    ];
  };
}
