//! Opt-in phase timing for finding where a call spends its time: with `BERTH_CNI_TRACE=1`
//! in the environment, each [`mark`] writes one line to stderr (never stdout, which carries
//! the result): milliseconds since the first mark and since the previous one. Without the
//! variable a mark costs one atomic load.

use std::io::Write;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Instant;

/// `Some((first, previous))` when tracing is on.
static STATE: OnceLock<Option<Mutex<(Instant, Instant)>>> = OnceLock::new();

/// Records that phase `what` just ended.
pub fn mark(what: &str) {
    let state = STATE.get_or_init(|| {
        std::env::var_os("BERTH_CNI_TRACE")
            .filter(|v| v == "1")
            .map(|_| {
                let now = Instant::now();
                Mutex::new((now, now))
            })
    });
    let Some(state) = state else {
        return;
    };
    let now = Instant::now();
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let line = format!(
        "berth-cni trace: {:8.3} ms {:+8.3} ms {what}\n",
        (now - s.0).as_secs_f64() * 1000.0,
        (now - s.1).as_secs_f64() * 1000.0
    );
    s.1 = now;
    let _ = std::io::stderr().write_all(line.as_bytes());
}
