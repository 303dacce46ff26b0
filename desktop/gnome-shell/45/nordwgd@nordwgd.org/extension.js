/* nordwgd quick settings for GNOME Shell 45 and later (ES modules).
 *
 * A toggle "VPN" with the country or state, a menu of countries (recently used first), the
 * Lockdown and Allow LAN switches, and a panel icon while connected or blocking. Everything
 * comes from nordwgd's D-Bus API on the system bus through one Gio.DBusProxy: its
 * PropertiesChanged signals and name-owner changes drive the UI; nothing polls.
 * The same logic for GNOME Shell 43 and 44 (legacy imports) is in ../43/.
 */
import Gio from 'gi://Gio';
import GLib from 'gi://GLib';
import GObject from 'gi://GObject';

import * as Main from 'resource:///org/gnome/shell/ui/main.js';
import * as PopupMenu from 'resource:///org/gnome/shell/ui/popupMenu.js';
import * as QuickSettings from 'resource:///org/gnome/shell/ui/quickSettings.js';
import {Extension} from 'resource:///org/gnome/shell/extensions/extension.js';

const BUS_NAME = 'org.nordwgd.Nordwgd1';
const OBJECT_PATH = '/org/nordwgd/Nordwgd1';
const NOT_AUTHORIZED = 'org.nordwgd.Nordwgd1.Error.NotAuthorized';

const MANAGER_XML = `<node>
  <interface name="org.nordwgd.Nordwgd1.Manager">
    <property name="State" type="s" access="read"/>
    <property name="ErrorCause" type="s" access="read"/>
    <property name="Blocking" type="s" access="read"/>
    <property name="Lockdown" type="b" access="read"/>
    <property name="AllowLan" type="b" access="read"/>
    <property name="Server" type="a{sv}" access="read"/>
    <property name="RecentLocations" type="aa{sv}" access="read"/>
    <method name="Connect"><arg name="options" type="a{sv}" direction="in"/></method>
    <method name="Disconnect"/>
    <method name="SetLockdown"><arg name="lockdown" type="b" direction="in"/></method>
    <method name="SetAllowLan"><arg name="allow_lan" type="b" direction="in"/></method>
    <method name="ListCountries"><arg name="countries" type="a(sss)" direction="out"/></method>
  </interface>
</node>`;
const ManagerProxy = Gio.DBusProxy.makeProxyWrapper(MANAGER_XML);

const CAUSES = {
    'auth-failed': 'access token refused',
    'no-server': 'no server for this location',
    'api-unavailable': 'NordVPN service unreachable',
    'tunnel-failed': 'tunnel could not be set up',
    'firewall-failed': 'firewall could not be applied',
    'dns-failed': 'DNS could not be set',
    'routing-failed': 'routes could not be set',
    'not-logged-in': 'not logged in',
    'offline': 'offline',
};

function unpack(variant) {
    return variant ? variant.recursiveUnpack() : null;
}

/* What the toggle shows for the daemon's properties (null: nordwgd is not running). */
function describe(props) {
    if (!props)
        return {active: false, busy: false, subtitle: 'Service not running', icon: 'network-vpn-disabled-symbolic', indicator: false};
    const server = props.Server || {};
    const blocked = props.Blocking !== 'open';
    switch (props.State) {
    case 'connected':
        return {active: true, busy: false, subtitle: server.country || 'Connected', icon: 'network-vpn-symbolic', indicator: true};
    case 'connecting':
        return {active: true, busy: true, subtitle: 'Connecting…', icon: 'network-vpn-acquiring-symbolic', indicator: true};
    case 'reconnecting':
        return {active: true, busy: true, subtitle: 'Reconnecting…', icon: 'network-vpn-acquiring-symbolic', indicator: true};
    case 'disconnecting':
        return {active: false, busy: true, subtitle: 'Disconnecting…', icon: 'network-vpn-acquiring-symbolic', indicator: blocked};
    case 'error':
        return {active: false, busy: false, subtitle: `Error: ${CAUSES[props.ErrorCause] || props.ErrorCause || 'failed'}`, icon: 'network-error-symbolic', indicator: true};
    case 'disconnected':
        if (blocked)
            return {active: false, busy: false, subtitle: 'Blocked (lockdown)', icon: 'network-vpn-no-route-symbolic', indicator: true};
        return {active: false, busy: false, subtitle: 'Off', icon: 'network-vpn-disconnected-symbolic', indicator: false};
    default:
        return {active: false, busy: false, subtitle: 'Unknown state', icon: 'network-vpn-no-route-symbolic', indicator: blocked};
    }
}

/* Countries with the recently used ones first: [[code, name, recent], ...]. */
function orderCountries(countries, recent) {
    const byKey = new Map();
    for (const [code, name] of countries) {
        byKey.set(code.toLowerCase(), [code, name]);
        byKey.set(name.toLowerCase(), [code, name]);
    }
    const first = [];
    for (const location of recent || []) {
        const found = byKey.get(String(location.country_code || location.country || '').toLowerCase());
        if (found && !first.some(([code]) => code === found[0]))
            first.push(found);
    }
    const rest = countries.map(([code, name]) => [code, name]).sort((a, b) => a[1].localeCompare(b[1]));
    return [...first.map(([c, n]) => [c, n, true]), ...rest.map(([c, n]) => [c, n, false])];
}

const VpnToggle = GObject.registerClass(
class VpnToggle extends QuickSettings.QuickMenuToggle {
    _init(manager) {
        super._init({title: 'VPN', subtitle: '', iconName: 'network-vpn-symbolic', toggleMode: false});
        this.name = 'nordwgd-vpn-toggle';
        this._manager = manager;
        this.menu.setHeader('network-vpn-symbolic', 'VPN', '');
        this._countries = new PopupMenu.PopupSubMenuMenuItem('Countries', false);
        this.menu.addMenuItem(this._countries);
        this.menu.addMenuItem(new PopupMenu.PopupSeparatorMenuItem());
        this._lockdown = new PopupMenu.PopupSwitchMenuItem('Lockdown', false);
        this._lockdown.connect('toggled', (item, on) => manager.setLockdown(on));
        this.menu.addMenuItem(this._lockdown);
        this._allowLan = new PopupMenu.PopupSwitchMenuItem('Allow LAN', false);
        this._allowLan.connect('toggled', (item, on) => manager.setAllowLan(on));
        this.menu.addMenuItem(this._allowLan);
        this.connect('clicked', () => manager.toggle());
    }

    sync(props, countries) {
        const shown = describe(props);
        this.checked = shown.active;
        this.iconName = shown.icon;
        this.subtitle = shown.subtitle;
        this.menu.setHeader(shown.icon, 'VPN', shown.subtitle);
        this.reactive = true;
        this._lockdown.setToggleState(Boolean(props && props.Lockdown));
        this._allowLan.setToggleState(Boolean(props && props.AllowLan));
        this._lockdown.setSensitive(Boolean(props));
        this._allowLan.setSensitive(Boolean(props));
        this._fillCountries(props, countries);
        return shown;
    }

    _fillCountries(props, countries) {
        const key = JSON.stringify([countries, props && props.RecentLocations]);
        if (key === this._countriesKey)
            return;
        this._countriesKey = key;
        this._countries.menu.removeAll();
        let recentDone = false;
        for (const [code, name, recent] of orderCountries(countries, props && props.RecentLocations)) {
            if (!recent && !recentDone) {
                recentDone = true;
                if (this._countries.menu.numMenuItems > 0)
                    this._countries.menu.addMenuItem(new PopupMenu.PopupSeparatorMenuItem());
            }
            const item = this._countries.menu.addAction(name, () => this._manager.connectTo(code));
            item.countryCode = code;
            item.recent = recent;
        }
    }
});

const VpnIndicator = GObject.registerClass(
class VpnIndicator extends QuickSettings.SystemIndicator {
    _init() {
        super._init();
        this._indicator = this._addIndicator();
        this._indicator.visible = false;
        this.name = 'nordwgd-vpn-indicator';
        this._manager = new Manager(() => this._sync());
        this._toggle = new VpnToggle(this._manager);
        this.quickSettingsItems.push(this._toggle);
        this._sync();
    }

    _sync() {
        const shown = this._toggle.sync(this._manager.props(), this._manager.countries);
        this._indicator.icon_name = shown.icon;
        this._indicator.visible = shown.indicator;
    }

    destroy() {
        this._manager.destroy();
        this.quickSettingsItems.forEach(item => item.destroy());
        super.destroy();
    }
});

/* nordwgd on the system bus: one proxy, its signals, and the calls the UI makes. */
class Manager {
    constructor(onChange) {
        this._onChange = onChange;
        this.countries = [];
        this._cancellable = new Gio.Cancellable();
        this._proxy = null;
        new ManagerProxy(Gio.DBus.system, BUS_NAME, OBJECT_PATH, (proxy, error) => {
            if (error) {
                logError(error, 'nordwgd: cannot create the D-Bus proxy');
                return;
            }
            this._proxy = proxy;
            proxy.connectObject(
                'g-properties-changed', () => this._onChange(),
                'notify::g-name-owner', () => this._ownerChanged(), this);
            this._ownerChanged();
        }, this._cancellable, Gio.DBusProxyFlags.NONE);
    }

    props() {
        const proxy = this._proxy;
        if (!proxy || !proxy.g_name_owner || proxy.State === null)
            return null;
        const props = {};
        for (const name of proxy.get_cached_property_names())
            props[name] = unpack(proxy.get_cached_property(name));
        return props;
    }

    _ownerChanged() {
        if (this._proxy && this._proxy.g_name_owner)
            this._loadCountries();
        this._onChange();
    }

    _loadCountries() {
        this._proxy.ListCountriesRemote((result, error) => {
            if (error)
                return;
            this.countries = result[0].map(([code, name]) => [code, name]);
            this._onChange();
        }, this._cancellable);
    }

    toggle() {
        const props = this.props();
        if (!props)
            return;
        if (['connected', 'connecting', 'reconnecting'].includes(props.State))
            this._call('Disconnect', [], 'disconnecting');
        else
            this._call('Connect', [{}], 'connecting');
    }

    connectTo(code) {
        this._call('Connect', [{country: new GLib.Variant('s', code)}], `connecting to ${code}`);
    }

    setLockdown(on) {
        this._call('SetLockdown', [on], `turning Lockdown ${on ? 'on' : 'off'}`);
    }

    setAllowLan(on) {
        this._call('SetAllowLan', [on], `turning Allow LAN ${on ? 'on' : 'off'}`);
    }

    _call(method, args, what) {
        if (!this._proxy)
            return;
        this._proxy[`${method}Remote`](...args, (result, error) => {
            if (!error)
                return;
            const remote = Gio.DBusError.get_remote_error(error);
            Gio.DBusError.strip_remote_error(error);  // leaves the daemon's own words
            const message = error.message;
            if (remote === NOT_AUTHORIZED)
                Main.notifyError(`Not allowed: ${what}`, `You are not authorized for this: ${message}`);
            else
                Main.notifyError(`VPN: ${what} failed`, message);
            this._onChange();  // put switches back to what the daemon says
        }, this._cancellable, Gio.DBusCallFlags.ALLOW_INTERACTIVE_AUTHORIZATION);
    }

    destroy() {
        this._cancellable.cancel();
        if (this._proxy)
            this._proxy.disconnectObject(this);
        this._proxy = null;
    }
}

export default class NordwgdExtension extends Extension {
    enable() {
        this._indicator = new VpnIndicator();
        Main.panel.statusArea.quickSettings.addExternalIndicator(this._indicator);
    }

    disable() {
        this._indicator.destroy();
        this._indicator = null;
    }
}
