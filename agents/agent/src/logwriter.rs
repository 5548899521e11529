//! The agent's log lines leave through a thread of their own.
//!
//! NRI handlers log as they answer (`file logs mounted`, `nri request handled`). Written
//! straight to stderr, each line is a `write` that can block for milliseconds: stderr is a
//! file on a disk busy with the runtime's own syncs, or a pipe a slow journald drains. That
//! wait would land on the runtime's CreateContainer. Here a handler only formats its line
//! and queues it; one thread writes the queue out in order.
//!
//! Nothing is dropped: when the queue is full (the output has been stuck for `capacity`
//! lines), logging blocks as plain stderr would. [`FlushGuard`] writes out what is queued
//! when the agent stops.

use std::io::Write;
use std::sync::mpsc::{
    Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError, sync_channel,
};
use std::time::{Duration, Instant};

/// Lines the queue holds before logging blocks: about 4 MiB of typical lines.
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

/// How long [`FlushGuard`] waits for the queue to drain: an output stuck for longer (a
/// full pipe nobody reads) must not keep the agent from stopping.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

enum Msg {
    Line(Vec<u8>),
    Flush(SyncSender<()>),
}

/// A `tracing_subscriber` writer: each event becomes one queued line.
#[derive(Clone)]
pub struct BackgroundWriter {
    tx: SyncSender<Msg>,
}

/// Writes out every queued line when dropped (or waits [`FLUSH_TIMEOUT`]).
pub struct FlushGuard {
    tx: SyncSender<Msg>,
}

/// Starts the writer thread on `out`.
pub fn spawn<W: Write + Send + 'static>(
    out: W,
    capacity: usize,
) -> std::io::Result<(BackgroundWriter, FlushGuard)> {
    let (tx, rx) = sync_channel(capacity.max(1));
    std::thread::Builder::new()
        .name("berth-log".into())
        .spawn(move || drain(out, rx))?;
    Ok((BackgroundWriter { tx: tx.clone() }, FlushGuard { tx }))
}

fn drain<W: Write>(mut out: W, rx: Receiver<Msg>) {
    // Errors writing the log have nowhere to be reported; the agent goes on.
    while let Ok(mut msg) = rx.recv() {
        // Write what is queued, then flush once: a burst costs one flush, not one per line.
        loop {
            match msg {
                Msg::Line(line) => {
                    let _ = out.write_all(&line);
                }
                Msg::Flush(ack) => {
                    let _ = out.flush();
                    let _ = ack.send(());
                }
            }
            msg = match rx.try_recv() {
                Ok(m) => m,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            };
        }
        let _ = out.flush();
    }
}

impl FlushGuard {
    /// Waits until every line queued before this call is written and flushed. False when the
    /// output did not drain within `timeout`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack_tx, ack_rx) = sync_channel(1);
        // The queue may be full of lines for a stuck output: do not wait longer to enqueue.
        let deadline = Instant::now() + timeout;
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match ack_rx.recv_timeout(left) {
            Ok(()) => true,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.flush(FLUSH_TIMEOUT);
    }
}

/// One event's bytes, queued as a single line when the formatter is done with it.
pub struct QueuedLine {
    buf: Vec<u8>,
    tx: SyncSender<Msg>,
}

impl Write for QueuedLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            // Blocks only when the queue is full; fails only when the thread is gone.
            let _ = self.tx.send(Msg::Line(std::mem::take(&mut self.buf)));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BackgroundWriter {
    type Writer = QueuedLine;

    fn make_writer(&'a self) -> QueuedLine {
        QueuedLine {
            buf: Vec::with_capacity(256),
            tx: self.tx.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    /// An output that records what it got and can be held shut.
    #[derive(Clone, Default)]
    struct Sink {
        got: Arc<Mutex<Vec<u8>>>,
        flushes: Arc<Mutex<usize>>,
        gate: Option<Arc<Barrier>>,
    }

    impl Sink {
        /// A sink whose first write blocks until the test waits on the barrier.
        fn held_shut() -> (Sink, Arc<Barrier>) {
            let gate = Arc::new(Barrier::new(2));
            let sink = Sink {
                gate: Some(gate.clone()),
                ..Default::default()
            };
            (sink, gate)
        }

        fn text(&self) -> String {
            String::from_utf8(self.got.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Some(g) = self.gate.take() {
                g.wait(); // opened by the test
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            *self.flushes.lock().unwrap() += 1;
            Ok(())
        }
    }

    /// `0\n1\n…`: what `n` numbered lines read once written out.
    fn numbered(n: usize) -> String {
        (0..n).map(|i| format!("{i}\n")).collect()
    }

    /// Logs the lines of `numbered(n)` one by one.
    fn log_numbered(w: &BackgroundWriter, n: usize) {
        for i in 0..n {
            line(w, &format!("{i}\n"));
        }
    }

    fn line(w: &BackgroundWriter, text: &str) {
        let mut l = w.make_writer();
        // A formatter may write an event in pieces: it is still one line.
        let (a, b) = text.split_at(text.len() / 2);
        l.write_all(a.as_bytes()).unwrap();
        l.write_all(b.as_bytes()).unwrap();
    }

    #[test]
    fn lines_arrive_whole_and_in_order_and_the_guard_flushes_them() {
        let sink = Sink::default();
        let (w, guard) = spawn(sink.clone(), 8).unwrap();
        log_numbered(&w, 100);
        assert!(guard.flush(Duration::from_secs(5)));
        assert_eq!(sink.text(), numbered(100));
        assert!(*sink.flushes.lock().unwrap() >= 1);
    }

    #[test]
    fn logging_does_not_wait_for_a_stuck_output_until_the_queue_is_full() {
        let (sink, gate) = Sink::held_shut();
        let (w, guard) = spawn(sink.clone(), 16).unwrap();
        // The first line is taken by the thread, which then blocks in write; 16 more fit.
        log_numbered(&w, 17);
        assert!(
            sink.got.lock().unwrap().is_empty(),
            "the output is held shut"
        );
        // A flush cannot finish while the output is stuck: it gives up at its timeout.
        assert!(!guard.flush(Duration::from_millis(50)));
        gate.wait();
        assert!(guard.flush(Duration::from_secs(5)));
        assert_eq!(sink.text(), numbered(17));
    }

    #[test]
    fn a_full_queue_blocks_the_logger_instead_of_dropping_lines() {
        let (sink, gate) = Sink::held_shut();
        let (w, guard) = spawn(sink.clone(), 2).unwrap();
        let w2 = w.clone();
        let logger = std::thread::spawn(move || log_numbered(&w2, 10));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!logger.is_finished(), "10 lines do not fit a queue of 2");
        gate.wait();
        logger.join().unwrap();
        assert!(guard.flush(Duration::from_secs(5)));
        assert_eq!(sink.text(), numbered(10));
    }

    #[test]
    fn dropping_the_guard_writes_out_the_queue() {
        let sink = Sink::default();
        let (w, guard) = spawn(sink.clone(), 64).unwrap();
        line(&w, "last words\n");
        drop(guard);
        assert_eq!(sink.text(), "last words\n");
    }
}
