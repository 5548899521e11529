//! Prometheus text metrics: calls and latencies per RPC, TLS handshake failures, and
//! counters the agent registers for its own events (NRI events, cleanups, ...).
//! Served on a separate port, off unless `metrics.listen` is set.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Latency buckets, seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A monotonically increasing counter registered by the agent.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (e.g. log dirs managed), registered by the agent.
#[derive(Clone, Default)]
pub struct Gauge(Arc<std::sync::atomic::AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
}

impl Series {
    fn value(&self) -> String {
        match self {
            Series::Counter(c) => c.get().to_string(),
            Series::Gauge(g) => g.get().to_string(),
        }
    }
}

struct Custom {
    help: String,
    kind: &'static str,
    series: Vec<(String, Series)>,
}

#[derive(Default)]
struct Inner {
    calls: Mutex<BTreeMap<(String, &'static str), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    handshake_failures: Mutex<BTreeMap<String, u64>>,
    audit_failures: AtomicU64,
    custom: Mutex<BTreeMap<String, Custom>>,
}

/// The metrics registry; clone it into the agent to add its own counters.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// A counter `name{labels}`; the same name and labels give the same counter.
    /// Names must match `[a-z_][a-z0-9_]*`; a name is either a counter or a gauge.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.series(name, help, "counter", labels, || {
            Series::Counter(Counter::default())
        }) {
            Series::Counter(c) => c,
            Series::Gauge(_) => panic!("metric {name} is already registered as a gauge"),
        }
    }

    /// A gauge `name{labels}`; the same name and labels give the same gauge.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.series(name, help, "gauge", labels, || {
            Series::Gauge(Gauge::default())
        }) {
            Series::Gauge(g) => g,
            Series::Counter(_) => panic!("metric {name} is already registered as a counter"),
        }
    }

    fn series(
        &self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        new: impl FnOnce() -> Series,
    ) -> Series {
        let mut label_text = String::new();
        if !labels.is_empty() {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            label_text = format!("{{{}}}", parts.join(","));
        }
        let mut custom = self.inner.custom.lock().expect("metrics lock");
        let entry = custom.entry(name.to_string()).or_insert_with(|| Custom {
            help: help.to_string(),
            kind,
            series: Vec::new(),
        });
        if let Some((_, s)) = entry.series.iter().find(|(l, _)| *l == label_text) {
            return s.clone();
        }
        let s = new();
        entry.series.push((label_text, s.clone()));
        s
    }

    pub(crate) fn observe_call(&self, method: &str, code: tonic::Code, elapsed: Duration) {
        *self
            .inner
            .calls
            .lock()
            .expect("metrics lock")
            .entry((method.to_string(), code_name(code)))
            .or_default() += 1;
        let mut lat = self.inner.latency.lock().expect("metrics lock");
        let h = lat.entry(method.to_string()).or_insert_with(|| Histogram {
            counts: vec![0; BUCKETS.len()],
            ..Default::default()
        });
        let s = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += s;
        h.count += 1;
    }

    pub(crate) fn handshake_failed(&self, reason: &str) {
        *self
            .inner
            .handshake_failures
            .lock()
            .expect("metrics lock")
            .entry(reason.to_string())
            .or_default() += 1;
    }

    pub(crate) fn audit_failed(&self) {
        self.inner.audit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Handshake failures by reason (`no_client_cert`, `unknown_ca`, `expired`, ...).
    pub fn handshake_failures(&self, reason: &str) -> u64 {
        self.inner
            .handshake_failures
            .lock()
            .expect("metrics lock")
            .get(reason)
            .copied()
            .unwrap_or(0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP berth_api_calls_total gRPC calls by method and result code.\n");
        out.push_str("# TYPE berth_api_calls_total counter\n");
        for ((m, code), n) in self.inner.calls.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "berth_api_calls_total{{method=\"{}\",code=\"{code}\"}} {n}",
                escape(m)
            );
        }
        out.push_str("# HELP berth_api_call_duration_seconds gRPC call latency by method.\n");
        out.push_str("# TYPE berth_api_call_duration_seconds histogram\n");
        for (m, h) in self.inner.latency.lock().expect("metrics lock").iter() {
            let m = escape(m);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "berth_api_call_duration_seconds_bucket{{method=\"{m}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "berth_api_call_duration_seconds_bucket{{method=\"{m}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "berth_api_call_duration_seconds_sum{{method=\"{m}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "berth_api_call_duration_seconds_count{{method=\"{m}\"}} {}",
                h.count
            );
        }
        out.push_str(
            "# HELP berth_api_tls_handshake_failures_total Refused TLS handshakes by reason.\n",
        );
        out.push_str("# TYPE berth_api_tls_handshake_failures_total counter\n");
        for (r, n) in self
            .inner
            .handshake_failures
            .lock()
            .expect("metrics lock")
            .iter()
        {
            let _ = writeln!(
                out,
                "berth_api_tls_handshake_failures_total{{reason=\"{r}\"}} {n}"
            );
        }
        out.push_str("# HELP berth_api_audit_write_failures_total Calls failed because the audit log could not be written.\n");
        out.push_str("# TYPE berth_api_audit_write_failures_total counter\n");
        let _ = writeln!(
            out,
            "berth_api_audit_write_failures_total {}",
            self.inner.audit_failures.load(Ordering::Relaxed)
        );
        for (name, c) in self.inner.custom.lock().expect("metrics lock").iter() {
            let _ = writeln!(out, "# HELP {name} {}", c.help);
            let _ = writeln!(out, "# TYPE {name} {}", c.kind);
            for (labels, series) in &c.series {
                let _ = writeln!(out, "{name}{labels} {}", series.value());
            }
        }
        out
    }

    /// Serves `GET /metrics` (HTTP/1.1, one request per connection) until `shutdown`.
    pub(crate) async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut shutdown = shutdown;
        loop {
            let conn = tokio::select! {
                c = listener.accept() => c,
                _ = shutdown.changed() => return,
            };
            let Ok((mut sock, _)) = conn else { continue };
            let metrics = self.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while n < buf.len() {
                        let m = sock.read(&mut buf[n..]).await?;
                        if m == 0 {
                            break;
                        }
                        n += m;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let first = head.lines().next().unwrap_or("");
                let (status, body) = if first.starts_with("GET /metrics ") {
                    ("200 OK", metrics.render())
                } else {
                    (
                        "404 Not Found",
                        "only /metrics is served here\n".to_string(),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_calls_histograms_and_agent_counters() {
        let m = Metrics::new();
        m.observe_call(
            "/berth.v1.Node/Info",
            tonic::Code::Ok,
            Duration::from_millis(3),
        );
        m.observe_call(
            "/berth.v1.Node/Info",
            tonic::Code::PermissionDenied,
            Duration::from_millis(1),
        );
        let nri = m.counter(
            "berth_nri_events_total",
            "NRI events.",
            &[("event", "create")],
        );
        nri.add(5);
        // Same name and labels: same counter.
        m.counter(
            "berth_nri_events_total",
            "NRI events.",
            &[("event", "create")],
        )
        .inc();
        m.handshake_failed("expired");
        let dirs = m.gauge("berth_filelogs_dirs", "Log dirs managed.", &[]);
        dirs.set(7);
        dirs.add(-2);
        let text = m.render();
        assert!(
            text.contains("berth_api_calls_total{method=\"/berth.v1.Node/Info\",code=\"OK\"} 1"),
            "{text}"
        );
        assert!(text.contains("code=\"PERMISSION_DENIED\"} 1"));
        assert!(text.contains(
            "berth_api_call_duration_seconds_bucket{method=\"/berth.v1.Node/Info\",le=\"0.005\"} 2"
        ));
        assert!(text.contains(
            "berth_api_call_duration_seconds_bucket{method=\"/berth.v1.Node/Info\",le=\"0.001\"} 1"
        ));
        assert!(
            text.contains(
                "berth_api_call_duration_seconds_count{method=\"/berth.v1.Node/Info\"} 2"
            )
        );
        assert!(text.contains("berth_nri_events_total{event=\"create\"} 6"));
        assert!(text.contains("berth_api_tls_handshake_failures_total{reason=\"expired\"} 1"));
        assert!(
            text.contains("# TYPE berth_filelogs_dirs gauge\nberth_filelogs_dirs 5\n"),
            "{text}"
        );
    }
}
