# A small stand-in for the parts of nixpkgs' lib and pkgs that module.nix and package.nix use,
# and for the module system's evaluation, for machines where nixpkgs cannot be had (Debian's
# nix-bin has no nixpkgs). It is not nixpkgs: types are not checked, lists in mkMerge are not
# concatenated, and a module may read only its own options. What it does evaluate is the
# module's logic: defaults, mkIf, mkMerge, the settings rendered as TOML, and what the module
# sets in systemd and /etc.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    foldl'
    isAttrs
    isBool
    isFloat
    isInt
    isList
    isString
    listToAttrs
    mapAttrs
    toJSON
    ;

  lib = rec {
    mkOption = attrs: attrs // { _type = "option"; };
    mkEnableOption = name: mkOption {
      type = types.bool;
      default = false;
      description = "Whether to enable ${name}.";
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    types = {
      bool = "bool";
      str = "str";
      path = "path";
      package = "package";
      listOf = type: "listOf ${type}";
      nullOr = type: "nullOr ${type}";
    };
    recursiveUpdate =
      lhs: rhs:
      lhs
      // mapAttrs (
        name: value:
        if isAttrs value && isAttrs (lhs.${name} or null) then
          recursiveUpdate lhs.${name} value
        else
          value
      ) rhs;
    optionalAttrs = condition: attrs: if condition then attrs else { };
    optional = condition: x: if condition then [ x ] else [ ];
    genAttrs =
      names: f:
      listToAttrs (
        map (name: {
          inherit name;
          value = f name;
        }) names
      );
    cleanSource = src: src;
    makeBinPath = packages: concatStringsSep ":" (map (p: "${p.name}/bin") packages);
    licenses.gpl3Plus = "GPL-3.0-or-later";
    platforms.linux = [ "x86_64-linux" ];
  };

  # TOML as pkgs.formats.toml would write it (scalars, lists of scalars, nested tables).
  tomlValue =
    value:
    if isBool value then
      (if value then "true" else "false")
    else if isInt value || isFloat value then
      toString value
    else if isString value then
      toJSON value
    else if isList value then
      "[" + concatStringsSep ", " (map tomlValue value) + "]"
    else
      throw "stand-in TOML: cannot write ${toJSON value}";
  toTOML =
    prefix: attrs:
    let
      names = attrNames attrs;
      scalars = filter (name: !isAttrs attrs.${name}) names;
      tables = filter (name: isAttrs attrs.${name}) names;
      header = if prefix == "" then "" else "[${prefix}]\n";
      body = concatStringsSep "" (map (name: "${name} = ${tomlValue attrs.${name}}\n") scalars);
      sub = name: toTOML (if prefix == "" then name else "${prefix}.${name}") attrs.${name};
    in
    (if scalars == [ ] && prefix != "" then "" else header + body)
    + concatStringsSep "" (map (name: "\n" + sub name) tables);

  pkgs = {
    formats.toml = _: {
      type = "toml";
      generate = name: value: {
        inherit name;
        text = toTOML "" value;
      };
    };
    callPackage = path: args: { name = "nordwgd"; };
  };

  # mkIf and mkMerge pushed down, as the module system does for the attributes it merges.
  resolve =
    value:
    if isAttrs value && (value._type or "") == "if" then
      (if value.condition then resolve value.content else { })
    else if isAttrs value && (value._type or "") == "merge" then
      foldl' lib.recursiveUpdate { } (map resolve value.contents)
    else if isAttrs value && !(value ? _type) then
      mapAttrs (_: resolve) value
    else
      value;

  defaults = options: mapAttrs (
    _: option: if (option._type or "") == "option" then option.default or null else defaults option
  ) options;

  # The module's result for `user` (an attrset like a NixOS configuration's).
  evalModule =
    path: user:
    let
      options = (import path { config = { }; inherit lib pkgs; }).options;
      cfg = lib.recursiveUpdate (defaults options.services.nordwgd) (user.services.nordwgd or { });
      module = import path {
        config.services.nordwgd = cfg;
        inherit lib pkgs;
      };
    in
    lib.recursiveUpdate (resolve module.config) { services.nordwgd = cfg; };
in
{
  inherit lib pkgs evalModule toTOML;
}
