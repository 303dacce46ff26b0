# nordwgd for Nix: `callPackage ./package.nix { }` from nixpkgs (see README.md here).
{
  lib,
  python3Packages,
  systemd,
  nftables,
  iproute2,
  wireguard-go,
}:

python3Packages.buildPythonApplication {
  pname = "nordwgd";
  version = "0.1.0";
  pyproject = true;

  src = lib.cleanSource ../..;

  build-system = [ python3Packages.setuptools ];

  # pyproject.toml's dependencies (tests/package/test_nix.py keeps the two lists equal).
  dependencies = with python3Packages; [
    dbus-fast
    httpx
    httpcore
    anyio
    pyroute2
    jinja2
    cryptography
    nftables
    systemd
  ];

  # The commands find nft, ip and wireguard-go on their PATH.
  makeWrapperArgs = [
    "--prefix"
    "PATH"
    ":"
    (lib.makeBinPath [
      nftables
      iproute2
      wireguard-go
    ])
  ];

  postInstall = ''
    install -Dm644 -t $out/lib/systemd/system units/*.service units/*.timer
    substituteInPlace $out/lib/systemd/system/*.service \
      --replace-quiet /usr/bin/nordwgd $out/bin/nordwgd \
      --replace-quiet /usr/bin/busctl ${systemd}/bin/busctl \
      --replace-quiet /usr/bin/systemctl ${systemd}/bin/systemctl
    install -Dm644 dbus/org.nordwgd.Nordwgd1.conf $out/share/dbus-1/system.d/org.nordwgd.Nordwgd1.conf
    install -Dm644 dbus/org.nordwgd.Nordwgd1.service \
      $out/share/dbus-1/system-services/org.nordwgd.Nordwgd1.service
    install -Dm644 data/polkit/org.nordwgd.nordwgd1.policy \
      $out/share/polkit-1/actions/org.nordwgd.nordwgd1.policy
    install -Dm644 -t $out/share/doc/nordwgd README.md docs/*.md data/nordwgd.toml.example
    PYTHONPATH=$out/${python3Packages.python.sitePackages}:$PYTHONPATH \
      python3 packaging/manpages.py --output man
    install -Dm644 -t $out/share/man/man1 man/*.1
    install -Dm644 -t $out/share/man/man5 man/*.5
    install -Dm644 -t $out/share/man/man8 man/*.8
  '';

  # The suite needs root, network namespaces and a test world (run from a checkout).
  doCheck = false;
  pythonImportsCheck = [ "nordwgd.launch" ];

  meta = {
    description = "NordVPN NordLynx (WireGuard) daemon with a kill-switch firewall and a D-Bus API";
    homepage = "https://github.com/nordwgd/nordwgd";
    license = lib.licenses.gpl3Plus;
    mainProgram = "nordwgctl";
    platforms = lib.platforms.linux;
  };
}
