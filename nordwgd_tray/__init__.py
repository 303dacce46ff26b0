"""nordwgd-tray: a StatusNotifierItem tray applet for nordwgd.

It follows the daemon's D-Bus API on the system bus (PropertiesChanged, NameOwnerChanged) and
shows it on the session bus as a StatusNotifierItem with a com.canonical.dbusmenu menu, plus
desktop notifications. It never polls. The daemon never imports this package.
"""
