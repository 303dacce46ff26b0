'use strict';
/* For tests only: GNOME Shell 43 has no flag for unsafe mode (Eval, Screenshot). */
class Extension {
    enable() {
        global.context.unsafe_mode = true;
    }

    disable() {
        global.context.unsafe_mode = false;
    }
}

function init() {
    return new Extension();
}
